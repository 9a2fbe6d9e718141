"""Formats read through datumaro's own importers (CVAT XML, LabelMe, Pascal VOC instance masks, Cityscapes, Open Images,
Segment Anything) through the one front door `python -m app import --ann`: a tiny dataset made with datumaro and
exported by its exporters comes back with every object, masks within IoU 0.99 of the source; bad input is one line."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from app.interop.format_detect import detect_format
from app.store.masks import decode_mask
from app.store.workspace import Workspace

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                                        "ignore::FutureWarning")
H, W = 40, 60
BLOB = np.zeros((H, W), bool)
BLOB[10:30, 35:55] = True
BLOB[12:16, 40:44] = False  # a hole: only a mask keeps it
# image -> [(class, polygon or None, mask or None)]
SOURCE = {"img1": [("cat", [5, 5, 25, 5, 25, 20, 5, 20], None), ("dog", None, BLOB)],
          "img2": [("dog", [10, 10, 30, 12, 20, 30], None), ("cat", [40, 2, 58, 4, 50, 20], None)]}
# our name -> (datumaro exporter, polygons kept as polygons by the format)
FORMATS = {"cvat": ("cvat", True), "labelme": ("label_me", True), "voc": ("voc_instance_segmentation", False),
           "cityscapes": ("cityscapes", False), "open-images": ("open_images", False), "sam": ("segment_anything", False)}
ROUND_TRIP: dict[str, tuple[int, int, float]] = {}  # format -> (images, instances, mean IoU): the README table


def reference(polygon, mask) -> np.ndarray:
    if mask is not None:
        return mask
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], H, W))).astype(bool)


def source_dataset():
    from datumaro.components.annotation import Mask, Polygon
    from datumaro.components.dataset import Dataset
    from datumaro.components.dataset_base import DatasetItem
    from datumaro.components.media import Image

    labels = ["cat", "dog"]
    items = []
    for k, (name, objects) in enumerate(SOURCE.items()):
        pixels = np.random.default_rng(k).integers(0, 255, (H, W, 3), dtype=np.uint8)
        annotations = [Polygon(polygon, label=labels.index(cls), id=n + 1, group=n + 1) if polygon else
                       Mask(mask, label=labels.index(cls), id=n + 1, group=n + 1)
                       for n, (cls, polygon, mask) in enumerate(objects)]
        items.append(DatasetItem(name, subset="default", media=Image.from_numpy(pixels), annotations=annotations))
    return Dataset.from_iterable(items, categories=labels, media_type=Image)


def export(tmp_path: Path, name: str) -> Path:
    exporter, polygons = FORMATS[name]
    dataset = source_dataset()
    if not polygons:  # a mask format: datumaro rasterises the polygons (pycocotools) before writing
        dataset = dataset.transform("polygons_to_masks")
    out = tmp_path / name
    dataset.export(str(out), exporter, save_media=True)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("name", list(FORMATS))
def test_round_trip_through_the_front_door(tmp_path: Path, capsys, name):
    from app.commands import main

    folder = export(tmp_path, name)
    assert detect_format(folder) == name
    assert main(["import", "--workspace", str(tmp_path / "ws"), "--ann", str(folder)]) == 0
    out = capsys.readouterr().out
    want = sum(map(len, SOURCE.values()))
    assert f"imported 2 images, {want} instances (0 crowd)" in out and f"read as {name} by datumaro" in out
    ious = []
    with Workspace.open(tmp_path / "ws") as ws:
        names = {c.id: c.name for c in ws.categories()}
        images = ws.list_images()
        assert len(images) == 2
        for record in images:
            stem = next(s for s in SOURCE if record.original_name.startswith(s))
            stored = [(names[i.category_id], decode_mask(i.rle_counts, i.height, i.width).astype(bool))
                      for i in ws.instances(record.id)]
            assert len(stored) == len(SOURCE[stem])
            for cls, polygon, mask in SOURCE[stem]:
                want_mask = reference(polygon, mask)
                cls = "object" if name == "sam" else cls  # SAM names no classes
                ious.append(max(iou(want_mask, got) for got_cls, got in stored if got_cls == cls))
    assert min(ious) >= 0.99, ious
    ROUND_TRIP[name] = (len(images), len(ious), float(np.mean(ious)))
    print(f"\nROUND TRIP {name}: {len(images)} images, {len(ious)} instances, mean IoU {np.mean(ious):.4f}, "
          f"min {min(ious):.4f}")


def test_a_zip_and_an_xml_file_and_insisting(tmp_path: Path, capsys):
    from app.commands import main

    folder = export(tmp_path, "cvat")
    archive = tmp_path / "cvat.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.rglob("*"):
            zf.write(path, path.relative_to(folder))
    assert main(["import", "--workspace", str(tmp_path / "ws"), "--ann", str(archive), "--dry-run"]) == 0
    assert "would import 2 images, 4 instances" in capsys.readouterr().out
    assert detect_format(folder / "default.xml") == "cvat"
    assert main(["import", "--workspace", str(tmp_path / "ws2"), "--ann", str(folder / "default.xml")]) == 0
    assert "imported 2 images, 4 instances" in capsys.readouterr().out
    assert main(["import", "--workspace", str(tmp_path / "ws3"), "--ann", str(folder), "--format", "labelme"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "labelme" in err[0], err
    assert not (tmp_path / "ws3" / "workspace.sqlite").exists() or not Workspace.open(tmp_path / "ws3").list_images()


def test_a_broken_file_is_one_line_and_nothing_is_written(tmp_path: Path, capsys):
    from app.commands import main

    folder = export(tmp_path, "cvat")
    xml = folder / "default.xml"
    xml.write_text(xml.read_text()[: len(xml.read_text()) // 2])  # cut mid-file
    assert main(["import", "--workspace", str(tmp_path / "ws"), "--ann", str(folder), "--format", "cvat"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "datumaro could not read it as cvat" in err[0] and "Traceback" not in err[0], err
    with Workspace.open(tmp_path / "ws") as ws:
        assert ws.list_images() == []


def test_hostile_paths_and_coordinates(tmp_path: Path, capsys):
    from app.commands import main

    folder = export(tmp_path, "labelme")
    (tmp_path / "secret.jpg").write_bytes((folder / "Images/default/img1.jpg").read_bytes())
    (folder / "Images/default/link.jpg").symlink_to(tmp_path / "secret.jpg")
    assert main(["import", "--workspace", str(tmp_path / "ws"), "--ann", str(folder)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "points outside the dataset folder" in err[0], err
    (folder / "Images/default/link.jpg").unlink()
    sam = export(tmp_path, "sam")
    data = json.loads((sam / "img1.json").read_text())
    data["annotations"][0]["segmentation"]["counts"] = "not rle at all"
    (sam / "img1.json").write_text(json.dumps(data))
    assert main(["import", "--workspace", str(tmp_path / "ws"), "--ann", str(sam)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert main(["import", "--workspace", str(tmp_path / "ws"), "--ann", str(sam), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "imported" in out and "skipped" in out, out


def test_report_table(tmp_path: Path):
    """Prints the README table rows (run after the round trips, -s to see them)."""
    shutil.rmtree(tmp_path, ignore_errors=True)
    for name, (images, instances, mean) in ROUND_TRIP.items():
        print(f"| {name} | {images} images, {instances} instances | {mean:.4f} |")
