"""`python -m app import` into a workspace it has to create: a dry run or a failed import leaves no workspace behind
(a failed start leaves nothing), a real one keeps it, and a folder that was there before keeps what it held."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from interopkit import build_workspace, disk

from app.commands import main
from app.interop.export import export_coco
from app.store.workspace import Workspace

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    with build_workspace(tmp_path / "src", 2, lambda k: [(3, disk(20, 20 + 10 * k, 9))], (7, disk(45, 15, 8))) as src:
        path = export_coco(src, tmp_path / "coco")
    return path, tmp_path / "coco/images"


def test_a_dry_run_into_a_new_workspace_creates_nothing(dataset, tmp_path: Path, capsys):
    path, images = dataset
    target = tmp_path / "new" / "ws"
    assert main(["import", "--workspace", str(target), "--ann", str(path), "--images", str(images), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would import 2 images")
    assert not (tmp_path / "new").exists()


def test_a_failed_import_removes_the_workspace_it_created_and_nothing_else(dataset, tmp_path: Path, capsys):
    path, images = dataset
    data = json.loads(path.read_text())
    data["images"][1]["file_name"] = "missing.jpg"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    args = ["--ann", str(broken), "--images", str(images)]
    assert main(["import", "--workspace", str(tmp_path / "fresh"), *args]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists()
    kept = tmp_path / "mine"  # a folder the person made, with a file of theirs: only what the import made goes
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert main(["import", "--workspace", str(kept), *args]) == 2
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]


def test_an_import_keeps_its_new_workspace_and_a_failure_keeps_an_existing_one(dataset, tmp_path: Path, capsys):
    path, images = dataset
    target = tmp_path / "ws"
    assert main(["import", "--workspace", str(target), "--ann", str(path), "--images", str(images)]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["import", "--workspace", str(target), "--ann", str(bad), "--images", str(images)]) == 2
    with Workspace.open(target) as ws:
        assert len(ws.list_images()) == 2
