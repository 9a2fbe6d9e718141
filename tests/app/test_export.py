"""Tests of app.interop.export: COCO JSON content, masks, stable ids, zip and atomic folder writes."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from app.interop.export import ExportError, export_coco, export_coco_zip, mask_to_polygons
from app.store.workspace import Workspace

H, W = 60, 80

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def ws(tmp_path: Path):
    workspace = Workspace.open(tmp_path / "ws")
    workspace.add_category("cell", 2)
    workspace.add_category("nucleus", 5, supercategory="organelle")
    yield workspace
    workspace.close()


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def disk(cy: int, cx: int, radius: int, hole: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    dist2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return (dist2 < radius ** 2) & (dist2 >= hole ** 2)


def ragged(seed: int) -> np.ndarray:
    """A disk with random salt noise: many RLE runs, several components."""
    noise = np.random.default_rng(seed).random((H, W)) < 0.03
    return disk(30, 40, 15) | noise


@pytest.fixture
def populated(ws: Workspace):
    """Two images: model, user, hidden and deleted instances. Returns (ws, ids dict)."""
    first = ws.add_image(image(1), "scan.png")
    second = ws.add_image(image(2), "scan.png")  # same original name, different pixels
    model_a, model_b = ws.set_predictions(first, [(2, 0.9, ragged(1), {"fpn_level": 3}),
                                                  (5, 0.6, disk(15, 20, 9), None)]).added
    user = ws.add_instance(second, 5, disk(30, 40, 20, hole=8))
    hidden = ws.add_instance(second, 2, disk(10, 10, 6))
    ws.set_hidden(hidden)
    deleted = ws.add_instance(second, 2, disk(45, 65, 7))
    ws.delete_instance(deleted)
    ids = dict(first=first, second=second, model_a=model_a, model_b=model_b, user=user,
               hidden=hidden, deleted=deleted)
    return ws, ids


def stored_masks(ws: Workspace) -> dict[int, np.ndarray]:
    return {inst.id: inst.mask for img in ws.list_images() for inst in ws.instances(img.id)}


def test_rle_export_matches_workspace_exactly(populated, tmp_path: Path):
    ws, ids = populated
    json_path = export_coco(ws, tmp_path / "out")
    assert json_path == (tmp_path / "out" / "annotations" / "instances_default.json").resolve()
    coco = COCO(str(json_path))

    masks = stored_masks(ws)
    ann_ids = sorted(coco.getAnnIds())
    # deleted excluded; hidden still exported; annotation id == instance id
    assert ann_ids == sorted([ids["model_a"], ids["model_b"], ids["user"], ids["hidden"]])
    for ann in coco.loadAnns(ann_ids):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), masks[ann["id"]])
        mask = masks[ann["id"]]
        ys, xs = np.nonzero(mask)
        assert ann["area"] == mask.sum()
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
    assert coco.loadAnns(ids["user"])[0]["category_id"] == 5
    assert coco.loadAnns(ids["user"])[0]["image_id"] == ids["second"]

    cats = coco.loadCats(coco.getCatIds())
    assert [(c["id"], c["name"], c["supercategory"]) for c in cats] == [
        (2, "cell", "object"), (5, "nucleus", "organelle")]

    images = coco.loadImgs(coco.getImgIds())
    assert [img["id"] for img in images] == [ids["first"], ids["second"]]
    names = [img["file_name"] for img in images]
    assert len(set(names)) == 2 and names[0] == "scan.png"
    for img in images:
        assert (img["width"], img["height"]) == (W, H)
        copied = tmp_path / "out" / "images" / img["file_name"]
        assert copied.read_bytes() == ws.image_path(img["id"]).read_bytes()


def test_polygon_export_is_close_to_masks(populated, tmp_path: Path):
    ws, ids = populated
    speck = np.zeros((H, W), bool)
    speck[3, 3] = True
    speck_id = ws.add_instance(ids["first"], 2, speck)
    edge_id = ws.add_instance(ids["first"], 2, disk(0, 0, 12))  # touches the image border
    coco = COCO(str(export_coco(ws, tmp_path / "out", mask_format="polygon")))
    masks = stored_masks(ws)
    assert sorted(coco.getAnnIds()) == sorted(
        [ids["model_a"], ids["model_b"], ids["user"], ids["hidden"], speck_id, edge_id])
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert isinstance(ann["segmentation"], list)
        assert all(len(poly) >= 6 and len(poly) % 2 == 0 for poly in ann["segmentation"])
        exported = coco.annToMask(ann).astype(bool)
        truth = masks[ann["id"]]
        if ann["id"] == ids["user"]:
            truth = disk(30, 40, 20)  # polygon mode fills holes
        iou = (exported & truth).sum() / (exported | truth).sum()
        assert iou > 0.9, (ann["id"], iou)
        assert ann["area"] == exported.sum()  # area of what the polygons rasterise to
        ys, xs = np.nonzero(exported)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert coco.loadAnns(ids["user"])[0]["area"] > masks[ids["user"]].sum()  # the hole is filled
    assert "holes are filled" in coco.dataset["info"]["note"]


def test_mask_to_polygons_drops_holes():
    ring = disk(30, 40, 20, hole=8)
    assert len(mask_to_polygons(ring)) == 1  # outer contour only
    two_blobs = disk(15, 15, 5) | disk(45, 60, 6)
    assert len(mask_to_polygons(two_blobs)) == 2
    assert mask_to_polygons(np.zeros((H, W), bool)) == []


def test_ids_are_stable_across_exports_and_deletions(populated, tmp_path: Path):
    ws, ids = populated

    def ann_ids(path: Path) -> dict[int, tuple]:
        data = json.loads(path.read_text())
        return {a["id"]: (a["image_id"], a["category_id"], a["segmentation"]["counts"])
                for a in data["annotations"]}

    first = ann_ids(export_coco(ws, tmp_path / "one"))
    second = ann_ids(export_coco(ws, tmp_path / "two"))
    assert first == second
    ws.delete_instance(ids["model_a"])
    third = ann_ids(export_coco(ws, tmp_path / "three"))
    assert ids["model_a"] not in third
    assert third == {k: v for k, v in first.items() if k != ids["model_a"]}
    ws.undo(ids["first"])
    assert ann_ids(export_coco(ws, tmp_path / "four")) == first


def test_reviewed_only_and_empty_exports(ws: Workspace, tmp_path: Path):
    with pytest.raises(ExportError, match="no images"):
        export_coco(ws, tmp_path / "empty")
    with pytest.raises(ExportError, match="no images"):
        export_coco_zip(ws, tmp_path / "empty.zip")
    assert not (tmp_path / "empty").exists() and not (tmp_path / "empty.zip").exists()

    a = ws.add_image(image(1), "a.png")
    b = ws.add_image(image(2), "b.png")
    ws.add_instance(a, 2, disk(20, 20, 5))
    with pytest.raises(ExportError, match="no reviewed images"):
        export_coco(ws, tmp_path / "r", reviewed_only=True)
    ws.set_reviewed(b)
    data = json.loads(export_coco(ws, tmp_path / "r", reviewed_only=True).read_text())
    assert [img["id"] for img in data["images"]] == [b]
    assert data["annotations"] == []  # an image without instances is still a valid entry
    assert [p.name for p in (tmp_path / "r" / "images").iterdir()] == ["b.png"]


def test_existing_export_needs_overwrite_and_is_replaced_atomically(populated, tmp_path: Path):
    ws, ids = populated
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.txt").write_text("keep me")
    export_coco(ws, out)
    with pytest.raises(ExportError, match="overwrite=True"):
        export_coco(ws, out)

    ws.delete_instance(ids["user"])
    (out / "images" / "stale.png").write_bytes(b"old export leftover")
    json_path = export_coco(ws, out, overwrite=True)
    data = json.loads(json_path.read_text())
    assert ids["user"] not in {a["id"] for a in data["annotations"]}
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "annotations", "images"]
    assert (out / "README.txt").read_text() == "keep me"
    assert not (out / "images" / "stale.png").exists()  # images/ replaced as a whole


def test_zip_export(populated, tmp_path: Path):
    ws, ids = populated
    zip_path = tmp_path / "exports" / "dataset.zip"
    zip_path.parent.mkdir()
    zip_path.write_bytes(b"previous zip")
    assert export_coco_zip(ws, zip_path, mask_format="rle") == zip_path.resolve()
    assert [p.name for p in zip_path.parent.iterdir()] == ["dataset.zip"]  # no temp leftovers

    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        data = json.loads(archive.read("annotations/instances_default.json"))
        archive.extractall(tmp_path / "unzipped")
    assert names == {"annotations/instances_default.json"} | {
        f"images/{img['file_name']}" for img in data["images"]}
    coco = COCO(str(tmp_path / "unzipped" / "annotations" / "instances_default.json"))
    masks = stored_masks(ws)
    for ann in coco.loadAnns(coco.getAnnIds()):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), masks[ann["id"]])
    for img in data["images"]:
        decoded = cv2.imread(str(tmp_path / "unzipped" / "images" / img["file_name"]))
        np.testing.assert_array_equal(decoded[:, :, ::-1], ws.get_image(img["id"]))


def test_bad_mask_format_is_rejected(populated, tmp_path: Path):
    ws, _ = populated
    with pytest.raises(ExportError, match="mask_format"):
        export_coco(ws, tmp_path / "out", mask_format="bitmap")
