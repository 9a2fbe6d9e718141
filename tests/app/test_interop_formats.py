"""YOLO segmentation and instance-PNG exports, read back by supervision / OpenCV; `python -m app export`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import supervision as sv
import yaml

from app.commands import main as command_main
from app.interop.export import mask_to_polygons
from app.interop.formats import export_png, export_yolo
from interopkit import H, W, build_workspace, disk
from testutils import scaled

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def ws(tmp_path: Path):
    """Four images; categories 3 and 7 (a gap); a mask with a hole; a crowd region; a two-part mask."""
    workspace = build_workspace(tmp_path / "ws", 4,
                                lambda k: [(3, disk(30, 40, 15, hole=5)), (7, disk(10, 10, 6 + k) | disk(50, 70, 5))],
                                (3, disk(50, 15, 6)))
    yield workspace
    workspace.close()


def filled(mask: np.ndarray) -> np.ndarray:
    """The mask with holes filled (what polygon exports keep)."""
    out = np.zeros(mask.shape, np.uint8)
    polys = [np.round(np.asarray(p).reshape(-1, 2) - 0.25).astype(np.int32) for p in mask_to_polygons(mask)]
    cv2.fillPoly(out, polys, 1)
    return out.astype(bool) | mask


def test_yolo_export_reads_back_with_supervision(ws, tmp_path: Path):
    data_yaml = export_yolo(ws, tmp_path / "yolo", split=0.5)
    data = yaml.safe_load(data_yaml.read_text())
    assert data["names"] == {0: "date", 1: "fig"} and data["category_ids"] == {0: 3, 1: 7}
    total = 0
    for subset in ("train", "val"):
        dataset = sv.DetectionDataset.from_yolo(str(tmp_path / "yolo" / "images" / subset),
                                                str(tmp_path / "yolo" / "labels" / subset), str(data_yaml),
                                                force_masks=True)
        assert dataset.classes == ["date", "fig"] and len(dataset) == 2
        for path, _image, detections in dataset:
            image_id = int(Path(path).stem.removeprefix("img")) + 1
            truth = [inst for inst in ws.instances(image_id) if not (inst.meta or {}).get("iscrowd")]
            parts = [(inst, part) for inst in truth for part in mask_to_polygons(inst.mask)]
            assert len(detections) == len(parts) == 3  # a ring (one outer contour) + a two-part mask
            union = {0: np.zeros((H, W), bool), 1: np.zeros((H, W), bool)}
            for mask, class_id in zip(detections.mask, detections.class_id):
                union[int(class_id)] |= mask
            for inst in truth:
                got, want = union[0 if inst.category_id == 3 else 1], filled(inst.mask)
                iou = (got & want).sum() / (got | want).sum()
                assert iou > 0.85, iou  # polygons normalised to 0..1 and rasterised again by supervision
            total += len(detections)
    assert total == 12


def test_png_export_one_instance_id_map_per_image(ws, tmp_path: Path):
    index_path = export_png(ws, tmp_path / "png")
    index = json.loads(index_path.read_text())
    assert len(index) == 4
    for entry in index:
        png = cv2.imread(str(tmp_path / "png" / "masks" / entry["mask"]), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and png.shape == (H, W)
        assert (tmp_path / "png" / "images" / entry["file_name"]).is_file()
        for item in entry["instances"]:
            np.testing.assert_array_equal(png == item["value"], ws.get_instance(item["id"]).mask)
            assert item["category"] == {3: "date", 7: "fig"}[item["category_id"]]
    assert sum(item["iscrowd"] for entry in index for item in entry["instances"]) == 1


def run_cli(argv: list[str]) -> int:
    """app.commands.main's exit code (argparse's own errors exit through SystemExit)."""
    try:
        return command_main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize("extra, message", [
    (["--format", "coco", "--split", "1.0"], "between 0 and 1"),
    (["--format", "png", "--split", "0.2"], "--split applies to"),
    (["--format", "yolo", "--mask-format", "polygon"], "--mask-format applies"),
    (["--format", "tiff"], "invalid choice"),
])
def test_export_command_checks_arguments_first(ws, tmp_path: Path, capsys, extra, message):
    assert run_cli(["export", "--workspace", str(ws.root), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_export_command_refuses_a_non_workspace_and_an_existing_export(ws, tmp_path: Path, capsys):
    assert run_cli(["export", "--workspace", str(tmp_path), "--format", "coco", "--out", str(tmp_path / "o")]) == 2
    assert "not a workspace" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    out = tmp_path / "y"
    assert run_cli(["export", "--workspace", str(ws.root), "--format", "yolo", "--out", str(out)]) == 0
    assert run_cli(["export", "--workspace", str(ws.root), "--format", "yolo", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_export_command_writes_every_format(ws, tmp_path: Path, capsys):
    for fmt, produced in (("coco", "annotations/instances_train.json"), ("yolo", "data.yaml"),
                          ("png", "masks/index.json")):
        args = ["export", "--workspace", str(ws.root), "--format", fmt, "--out", str(tmp_path / fmt),
                *(["--split", "0.25"] if fmt != "png" else [])]
        assert run_cli([*args, "--reviewed-only"]) == 2  # nothing reviewed yet
        assert "no reviewed images" in capsys.readouterr().err
        assert run_cli(args) == 0, capsys.readouterr().err
        assert (tmp_path / fmt / produced).is_file()


@pytest.mark.slow
def test_python_m_app_export_end_to_end(ws, tmp_path: Path):
    """The command as a user runs it (every format in-process above): a refusal's exit code and line, then a
    COCO export."""
    args = [sys.executable, "-m", "app", "export", "--workspace", str(ws.root), "--format", "coco", "--out",
            str(tmp_path / "coco"), "--split", "0.25"]
    done = subprocess.run([*args, "--reviewed-only"], capture_output=True, text=True, cwd=REPO, timeout=scaled(120))
    assert done.returncode == 2 and done.stderr.strip().startswith("error:") and "no reviewed images" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=scaled(120))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "coco" / "annotations" / "instances_train.json").is_file()

ULTRALYTICS_CHECK = """
import json, sys
from ultralytics.data.utils import check_det_dataset
data = check_det_dataset(sys.argv[1], autodownload=False)
print(json.dumps({key: str(data[key]) for key in ("path", "train", "val")}))
"""


def ultralytics_resolution(data_yaml: Path, cwd: Path) -> dict[str, Path]:
    """The dataset root and train/val folders of ``data_yaml`` as Ultralytics would find them from ``cwd``.

    With `ultralytics` importable, its own ``check_det_dataset`` answers (in a subprocess, offline, with its
    settings in a temporary folder). Otherwise its documented rule: the root is ``path`` when given, else the
    yaml's folder; a relative root is taken from the current folder; train/val are joined to the root."""
    import importlib.util

    if importlib.util.find_spec("ultralytics") is not None:
        env = {**__import__("os").environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(cwd / ".ultralytics")}
        done = subprocess.run([sys.executable, "-c", ULTRALYTICS_CHECK, str(data_yaml)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=scaled(300))
        assert done.returncode == 0, done.stderr[-2000:]
        return {key: Path(value) for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    data = yaml.safe_load(data_yaml.read_text())
    root = Path(data.get("path") or data_yaml.parent)
    root = root if root.is_absolute() else cwd / root
    return {"path": root, **{key: (root / data[key]).resolve() for key in ("train", "val")}}


def test_yolo_data_yaml_resolves_from_any_folder(ws, tmp_path: Path):
    """Observed: ``path: .`` made ``yolo segment train data=EXPORT/data.yaml`` look in <cwd>/images/val."""
    data_yaml = export_yolo(ws, tmp_path / "yolo", split=0.5)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = ultralytics_resolution(data_yaml, elsewhere)
    assert found["path"].resolve() == (tmp_path / "yolo").resolve()
    for subset in ("train", "val"):
        assert found[subset] == (tmp_path / "yolo" / "images" / subset).resolve()
        assert len(list(found[subset].iterdir())) == 2
    assert data_yaml.read_text().startswith("# ")  # the header says what to do after moving the folder
