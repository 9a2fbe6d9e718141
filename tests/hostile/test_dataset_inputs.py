"""Hostile datasets through the real entry points (issue 20, observations 1, 2, 4, 5, 11, 12).

`python -m app import` (in-process through `app.commands.main`, or in a subprocess where the old code
crashed the process), the Import & QA upload's `app.interop.imports.import_dataset` on a zip, and the
training loader `training.data.CocoInstances` / `condinst train`. Each hostile item is refused with
one line naming it (or skipped with --skip-bad); nothing outside the dataset is opened; a refused
import leaves no image file and no row behind.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hostile.hostile_data import (H, W, annotation, bad_rle_counts, coco, coco_folder, coco_zip, deep_json,
                                  files_under, good_coco, holds_bytes, image_entry, opened_under, sentinel,
                                  watch_opens, write_png, yolo_folder)
from testutils import REPO

from app.commands import main as app_main
from app.interop.imports import import_dataset
from app.store.workspace import Workspace
from condinst.errors import UserError
from training.data import CocoInstances, DatasetError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def run_import(capsys, ws: Path, *args: str) -> tuple[int, str, str]:
    """`python -m app import --workspace ws ARGS` in-process: (exit code, stdout, stderr)."""
    code = app_main(["import", "--workspace", str(ws), *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_nothing_written(ws: Path) -> None:
    """A refused import: no rows, no image or preview file, no scratch folder."""
    with Workspace.open(ws) as workspace:
        assert workspace.list_images() == [] and workspace.categories() == []
        assert files_under(workspace.images_dir) == [] and files_under(workspace.previews_dir) == []
        assert not list(workspace.root.glob(".import-*"))


def imported_names(ws: Path) -> list[str]:
    with Workspace.open(ws) as workspace:
        return sorted(img.original_name for img in workspace.list_images())


# ---- 1. paths stay inside the dataset --------------------------------------------------------------
def escaping_name(kind: str, images: Path, secret: Path) -> str:
    """A file_name that reaches ``secret`` from the image folder: '../' steps, absolute, or a symlink."""
    if kind == "dotdot":
        return os.path.relpath(secret, images)
    if kind == "absolute":
        return str(secret)
    (images / "link.png").symlink_to(secret)
    return "link.png"


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_coco_file_name_outside_the_image_folder_is_refused_and_never_opened(kind, tmp_path, capsys):
    secret, secret_bytes = sentinel(tmp_path)
    ann, images = coco_folder(tmp_path / "ds", good_coco(), {"good.png": 0})
    name = escaping_name(kind, images, secret)
    ann.write_text(json.dumps(good_coco([image_entry(2, name)], [annotation(2, 2)])))
    ws = tmp_path / "ws"
    with watch_opens() as opened:
        code, _, err = run_import(capsys, ws, "--ann", str(ann), "--images", str(images))
        assert code == 2
        one_error_line(err, "image id 2 (", repr(name), "outside")  # the name in full, once
        assert_nothing_written(ws)
        code, out, _ = run_import(capsys, ws, "--ann", str(ann), "--images", str(images), "--skip-bad")
        assert code == 0 and "imported 1 images" in out and "image id 2 (" in out and repr(name) in out
    assert opened_under(opened, secret.parent) == []
    assert imported_names(ws) == ["good.png"] and not holds_bytes(ws, secret_bytes)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink_member"])
def test_a_zip_upload_never_reads_outside_the_extracted_zip(kind, tmp_path):
    """The Import & QA upload (`import_dataset` on the uploaded zip) and `python -m app import --ann A.zip`."""
    secret, secret_bytes = sentinel(tmp_path)
    files = {"good.png": write_png(tmp_path / "good.png", 0).read_bytes()}
    links = {}
    if kind == "dotdot":  # deep enough to climb out of any extraction folder, then down to the secret
        name = "../" * 40 + str(secret).lstrip("/")
    elif kind == "absolute":
        name = str(secret)
    else:
        name = "link.png"
        links = {"images/default/link.png": str(secret)}
    data = good_coco([image_entry(2, name)], [annotation(2, 2)])
    upload = coco_zip(tmp_path / "upload.zip", data, files, links)
    with watch_opens() as opened, Workspace.open(tmp_path / "ws") as ws:
        with pytest.raises(UserError) as refused:
            import_dataset(ws, ann=upload)
        assert "image id 2" in str(refused.value) and "\n" not in str(refused.value)
        assert ws.list_images() == [] and files_under(ws.images_dir) == []
        report = import_dataset(ws, ann=upload, skip_bad=True)
        assert report.images == 1 and len(report.skipped) == 1 and "image id 2" in report.skipped[0]
    assert opened_under(opened, secret.parent) == []
    assert not holds_bytes(tmp_path / "ws", secret_bytes)


@pytest.mark.parametrize("what", ["image", "label", "data.yaml"])
def test_yolo_symlinks_out_of_the_dataset_are_refused(what, tmp_path):
    secret, secret_bytes = sentinel(tmp_path)
    outside_label = tmp_path / "private" / "labels.txt"
    outside_label.write_text("0 0.1 0.1 0.5 0.1 0.5 0.5\n")
    outside_yaml = tmp_path / "private" / "data.yaml"
    outside_yaml.write_text('{"names": ["secret-class"]}')
    root = yolo_folder(tmp_path / "yolo", {"good": ["0 0.1 0.1 0.5 0.1 0.5 0.5"]})
    if what == "image":
        (root / "images/train/link.png").symlink_to(secret)
        (root / "labels/train/link.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.5\n")
        needle = "link.png"
    elif what == "label":
        write_png(root / "images/train/other.png", 7)
        (root / "labels/train/other.txt").symlink_to(outside_label)
        needle = "other.txt"
    else:
        (root / "data.yaml").unlink()
        (root / "data.yaml").symlink_to(outside_yaml)
        needle = "data.yaml"
    with watch_opens() as opened, Workspace.open(tmp_path / "ws") as ws:
        with pytest.raises(DatasetError, match="outside"):
            import_dataset(ws, yolo=root)
        assert ws.list_images() == [] and files_under(ws.images_dir) == []
        if what != "data.yaml":  # without its class names there is no dataset to import
            report = import_dataset(ws, yolo=root, skip_bad=True)
            assert report.images >= 1 and any(needle in m for m in report.skipped), report.skipped
        assert "secret-class" not in {c.name for c in ws.categories()}
    assert opened_under(opened, secret.parent) == []
    assert not holds_bytes(tmp_path / "ws", secret_bytes)


def test_training_loader_refuses_file_names_outside_its_image_folder(tmp_path, capsys):
    from training.cli import main as train_main

    secret, _ = sentinel(tmp_path)
    ann, images = coco_folder(tmp_path / "ds", good_coco(), {"good.png": 0})
    names = [os.path.relpath(secret, images), str(secret), escaping_name("symlink", images, secret)]
    ann.write_text(json.dumps(good_coco([image_entry(k + 2, n) for k, n in enumerate(names)],
                                        [annotation(k + 2, k + 2) for k in range(len(names))])))
    with watch_opens() as opened:
        with pytest.raises(DatasetError, match="outside"):
            CocoInstances(ann, images)
        dataset = CocoInstances(ann, images, on_error="skip")
        with pytest.raises(SystemExit) as exited:
            train_main(["train", "--train-ann", str(ann), "--train-images", str(images),
                        "--output-dir", str(tmp_path / "run"), "--device", "cpu"])
    assert [info.file_name for info in dataset.images] == ["good.png"] and len(dataset.skipped) == 3
    assert exited.value.code == 2
    one_error_line(capsys.readouterr().err, "image id 2", "outside")
    assert opened_under(opened, secret.parent) == []


def test_file_names_the_file_system_cannot_look_up_are_one_line(tmp_path, capsys):
    names = ["a" * 5000, "x\x00y", "images/" * 2000 + "q.png"]
    data = good_coco([image_entry(k + 2, n) for k, n in enumerate(names)], [annotation(2, 2)])
    ann, images = coco_folder(tmp_path / "ds", data, {"good.png": 0})
    code, _, err = run_import(capsys, tmp_path / "ws", "--ann", str(ann), "--images", str(images))
    assert code == 2
    one_error_line(err, "image id 2")
    assert_nothing_written(tmp_path / "ws")
    upload = coco_zip(tmp_path / "upload.zip", data, {"good.png": (images / "good.png").read_bytes()})
    with Workspace.open(tmp_path / "ws") as ws:
        report = import_dataset(ws, ann=upload, skip_bad=True)
    assert report.images == 1 and len(report.skipped) == 3 and all("\n" not in m for m in report.skipped)


# ---- 2. numbers in range before native code sees them ---------------------------------------------
HUGE_POLYGONS = [[1e30, 10, 30, 10, 30, 30], [10, 10, 1e308, 10, 30, 1e308], [-1e30, -1e30, 30, 10, 30, 30],
                 [10, 10, 30, 10, 30, 5e6], [10, 10, 30, 10, float("nan"), 30], [10, 10, float("inf"), 10, 30, 30]]
HUGE_BOXES = [[1e308, 10, 20, 20], [10, 10, 1e308, 20], [10, 10, 20, float("inf")]]


def huge_number_dataset(root: Path) -> tuple[Path, Path]:
    bad = [annotation(10 + k, 1, segmentation=[p]) for k, p in enumerate(HUGE_POLYGONS)]
    bad += [annotation(20 + k, 1, bbox=b) for k, b in enumerate(HUGE_BOXES)]
    bad += [annotation(30, 1, segmentation={"size": [H, W], "counts": [2**40, H * W - 2**40]})]
    return coco_folder(root, good_coco((), bad), {"good.png": 0})


def test_huge_coordinates_are_one_line_not_a_segfault(tmp_path):
    """Old code: pycocotools rasterised 1e30 and the process died (exit 139): run it in a subprocess."""
    ann, images = huge_number_dataset(tmp_path / "ds")
    command = [sys.executable, "-m", "app", "import", "--workspace", str(tmp_path / "ws"), "--ann", str(ann),
               "--images", str(images)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    refused = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode == 2, refused.stderr[-2000:]
    one_error_line(refused.stderr, "annotation id 10")
    assert_nothing_written(tmp_path / "ws")
    skipped = subprocess.run(command + ["--skip-bad"], cwd=REPO, capture_output=True, text=True, timeout=300,
                             env=env)
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    bad_ids = [10 + k for k in range(len(HUGE_POLYGONS))] + [20 + k for k in range(len(HUGE_BOXES))] + [30]
    assert f"skipped {len(bad_ids)} bad entries" in skipped.stdout, skipped.stdout
    for ann_id in bad_ids:
        assert f"annotation id {ann_id} " in skipped.stdout, ann_id
    assert "imported 1 images, 1 instances" in skipped.stdout


def test_training_loader_refuses_huge_coordinates(tmp_path):
    ann, images = huge_number_dataset(tmp_path / "ds")
    with pytest.raises(DatasetError, match="annotation id 10 "):
        CocoInstances(ann, images)
    dataset = CocoInstances(ann, images, on_error="skip")
    assert [a["id"] for a in dataset.images[0].annotations] == [1]
    assert len(dataset.skipped) == len(HUGE_POLYGONS) + len(HUGE_BOXES) + 1
    assert all("\n" not in m for m in dataset.skipped)


# ---- 4. JSON nested 100k levels --------------------------------------------------------------------
def test_deeply_nested_json_is_one_line_everywhere(tmp_path, capsys):
    from training.cli import main as train_main

    deep = tmp_path / "deep.json"
    deep.write_bytes(deep_json())
    images = tmp_path / "images"
    write_png(images / "good.png", 0)
    ws = tmp_path / "ws"
    code, _, err = run_import(capsys, ws, "--ann", str(deep), "--images", str(images))
    assert code == 2
    one_error_line(err, "deep.json", "nested")
    assert_nothing_written(ws)
    with Workspace.open(ws) as workspace:
        for kwargs in ({"ann": coco_zip(tmp_path / "deep.zip", deep_json(), {})}, {"results": deep}):
            with pytest.raises(UserError, match="nested") as refused:
                import_dataset(workspace, **kwargs)
            assert "\n" not in str(refused.value)
        root = yolo_folder(tmp_path / "yolo", {"a": ["0 0.1 0.1 0.5 0.1 0.5 0.5"]})
        (root / "data.yaml").write_text("names: " + "[" * 100_000 + "]" * 100_000)
        with pytest.raises(UserError, match="nested"):
            import_dataset(workspace, yolo=root)
    with pytest.raises(DatasetError, match="nested"):
        CocoInstances(deep, images)
    with pytest.raises(SystemExit) as exited:
        train_main(["train", "--train-ann", str(deep), "--train-images", str(images),
                    "--output-dir", str(tmp_path / "run"), "--device", "cpu"])
    assert exited.value.code == 2
    one_error_line(capsys.readouterr().err, "deep.json", "nested")
    assert_nothing_written(ws)


# ---- 5. RLE counts that are not COCO RLE -------------------------------------------------------------
def bad_rle_dataset(root: Path) -> tuple[Path, Path, list[int]]:
    bad = [annotation(10 + k, 1, segmentation={"size": [H, W], "counts": counts}, iscrowd=k % 2)
           for k, counts in enumerate(bad_rle_counts())]
    ann, images = coco_folder(root, good_coco((), bad), {"good.png": 0})
    return ann, images, [a["id"] for a in bad]


def test_invalid_rle_counts_are_one_line_and_leave_nothing(tmp_path, capsys):
    ann, images, bad_ids = bad_rle_dataset(tmp_path / "ds")
    ws = tmp_path / "ws"
    code, _, err = run_import(capsys, ws, "--ann", str(ann), "--images", str(images))
    assert code == 2
    one_error_line(err, f"annotation id {bad_ids[0]} ", "RLE")
    assert_nothing_written(ws)  # no image file without its row
    code, out, _ = run_import(capsys, ws, "--ann", str(ann), "--images", str(images), "--skip-bad")
    assert code == 0 and "imported 1 images, 1 instances" in out, out
    assert all(f"annotation id {i} " in out for i in bad_ids), out
    for k, counts in enumerate(bad_rle_counts()):  # each alone: one line, never an image without a row
        single = coco_folder(tmp_path / f"one{k}", coco([image_entry(1, "a.png")], [
            annotation(1, 1, segmentation={"size": [H, W], "counts": counts}, iscrowd=1)]))
        code, _, err = run_import(capsys, tmp_path / f"ws{k}", "--ann", str(single[0]), "--images", str(single[1]))
        assert code == 2, counts
        one_error_line(err, "annotation id 1 ", "RLE")
        assert_nothing_written(tmp_path / f"ws{k}")


def test_invalid_rle_counts_in_a_zip_upload_and_the_training_loader(tmp_path):
    ann, images, bad_ids = bad_rle_dataset(tmp_path / "ds")
    data = json.loads(ann.read_text())
    upload = coco_zip(tmp_path / "upload.zip", data, {"good.png": (images / "good.png").read_bytes()})
    with Workspace.open(tmp_path / "ws") as ws:
        with pytest.raises(UserError, match=f"annotation id {bad_ids[0]} .*RLE"):
            import_dataset(ws, ann=upload)
        assert ws.list_images() == [] and files_under(ws.images_dir) == []
        assert len(import_dataset(ws, ann=upload, skip_bad=True).skipped) == len(bad_ids)
    with pytest.raises(DatasetError, match=f"annotation id {bad_ids[0]} .*RLE"):
        CocoInstances(ann, images)
    assert len(CocoInstances(ann, images, on_error="skip").skipped) == len(bad_ids)


# ---- 11. YOLO class nan / inf ------------------------------------------------------------------------
def test_yolo_class_that_is_not_a_finite_number_is_a_numbered_line(tmp_path):
    rows = ["0 0.1 0.1 0.5 0.1 0.5 0.5", "nan 0.1 0.1 0.5 0.1 0.5 0.5", "inf 0.1 0.1 0.5 0.1 0.5 0.5",
            "-inf 0.1 0.1 0.5 0.1 0.5 0.5", "1e400 0.1 0.1 0.5 0.1 0.5 0.5", "0 nan 0.1 0.5 0.1 0.5 0.5"]
    root = yolo_folder(tmp_path / "yolo", {"a": rows})
    with Workspace.open(tmp_path / "ws") as ws:
        with pytest.raises(DatasetError, match=r"a.txt line 2: class nan is not"):
            import_dataset(ws, yolo=root)
        assert ws.list_images() == [] and files_under(ws.images_dir) == []
        report = import_dataset(ws, yolo=root, skip_bad=True)
    assert report.instances == 1
    assert [m.split(": ", 1)[0].rsplit(" ", 1)[1] for m in report.skipped] == ["2", "3", "4", "5", "6"]


# ---- 12. ids beyond SQLite's 64 bits ---------------------------------------------------------------
@pytest.mark.parametrize("where", ["image", "annotation", "category"])
def test_ids_beyond_64_bits_are_one_line(where, tmp_path, capsys):
    huge = 2**63
    image_id, ann_id, category_id = (huge if where == w else 1 for w in ("image", "annotation", "category"))
    data = coco([image_entry(image_id, "a.png")], [annotation(ann_id, image_id, category_id=category_id)],
                [{"id": category_id, "name": "thing"}])
    ann, images = coco_folder(tmp_path / "ds", data)
    ws = tmp_path / "ws"
    code, _, err = run_import(capsys, ws, "--ann", str(ann), "--images", str(images))
    assert code == 2
    one_error_line(err, str(huge))
    assert_nothing_written(ws)
    with pytest.raises(DatasetError, match=str(huge)):
        CocoInstances(ann, images)


def test_a_class_id_the_workspace_cannot_store_gets_a_new_id_named_in_the_report(tmp_path, capsys):
    data = coco([image_entry(1, "a.png")], [annotation(1, 1, category_id=0)], [{"id": 0, "name": "zero"}])
    ann, images = coco_folder(tmp_path / "ds", data)
    code, out, _ = run_import(capsys, tmp_path / "ws", "--ann", str(ann), "--images", str(images))
    assert code == 0 and "0 'zero' -> 1 'zero' (new id)" in out  # classes match by name (app.interop.import_ids)


def test_negative_and_zero_ids_are_renumbered_but_not_past_the_last_id(tmp_path, capsys):
    data = coco([image_entry(2**63 - 1, "a.png"), image_entry(-2**63, "b.png")],
                [annotation(1, 2**63 - 1), annotation(2, -2**63)])
    ann, images = coco_folder(tmp_path / "ds", data)
    code, _, err = run_import(capsys, tmp_path / "ws", "--ann", str(ann), "--images", str(images))
    assert code == 2
    one_error_line(err, f"Image id {-2**63} needs a new positive id")
    assert_nothing_written(tmp_path / "ws")
