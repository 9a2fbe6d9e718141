"""Polygon exports are simplified by default (observed: 72,336 vertices where the source has 2,581) and stay
within IoU 0.98 of every mask; ``exact_polygons`` / ``--exact-polygons`` keep the pixel staircase."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pycocotools import mask as mask_utils
from testutils import DATASETS

from app.commands import main as command_main
from app.interop.export import build_coco
from app.interop.formats import export_yolo
from app.interop.imports import import_coco
from app.store.workspace import Workspace

FRUITS = DATASETS / "fruits_nuts/data"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def fruits(tmp_path_factory):
    """fruits_nuts (18 photos, 165 polygon labels) imported into a workspace."""
    if not (FRUITS / "trainval.json").is_file():
        pytest.skip(f"shared dataset {FRUITS} is not beside the repository")
    root = tmp_path_factory.mktemp("fruits")
    with Workspace.open(root / "ws") as ws:
        import_coco(ws, FRUITS / "trainval.json", FRUITS / "images")
    return root / "ws"


def vertices(annotations: list[dict]) -> int:
    return sum(len(polygon) // 2 for a in annotations for polygon in a["segmentation"])


def test_coco_polygons_are_simplified_close_to_every_mask(fruits):
    source = json.loads((FRUITS / "trainval.json").read_text())
    with Workspace.open(fruits) as ws:
        simple = build_coco(ws, mask_format="polygon").dataset
        exact = build_coco(ws, mask_format="polygon", exact_polygons=True).dataset
        masks = {i.id: i.rle for img in ws.list_images() for i in ws.instances(img.id)}
    assert len(simple["annotations"]) == len(exact["annotations"]) == len(source["annotations"]) == 165
    n_source, n_simple, n_exact = (vertices(d["annotations"]) for d in (source, simple, exact))
    assert n_exact > 20 * n_simple and n_simple < 1.2 * n_source  # 72,336 -> 2,769 (source 2,581)
    ious = []
    for annotation in simple["annotations"]:
        height, width = masks[annotation["id"]]["size"]
        polygons = mask_utils.merge(mask_utils.frPyObjects(annotation["segmentation"], height, width))
        ious.append(mask_utils.iou([polygons], [masks[annotation["id"]]], [0])[0][0])
    assert min(ious) >= 0.98  # measured: mean 0.991, min 0.983
    info = simple["info"]["polygons"]
    assert info["simplified"] and info["tolerance_px"] == 1.0 and info["instances"] == 165
    assert info["iou_with_mask_min"] == pytest.approx(min(ious), abs=1e-4)
    assert exact["info"]["polygons"]["simplified"] is False and exact["info"]["polygons"]["iou_with_mask_min"] > 0.99


def test_yolo_labels_are_simplified_and_exact_on_request(fruits, tmp_path: Path):
    with Workspace.open(fruits) as ws:
        simple = export_yolo(ws, tmp_path / "simple")
    assert command_main(["export", "--workspace", str(fruits), "--format", "yolo", "--out", str(tmp_path / "exact"),
                         "--exact-polygons"]) == 0

    def points(root: Path) -> int:
        return sum((len(line.split()) - 1) // 2 for path in (root / "labels" / "train").glob("*.txt")
                   for line in path.read_text().splitlines())

    assert points(tmp_path / "exact") > 20 * points(tmp_path / "simple")
    header = [line for line in simple.read_text().splitlines() if line.startswith("# polygons")]
    assert header and "1.0 px" in header[0] and "165 instances" in header[0]
    assert "exact pixel outlines" in (tmp_path / "exact" / "data.yaml").read_text()
    assert yaml.safe_load(simple.read_text())["names"]  # the comment lines leave the YAML as it was


def test_exact_polygons_needs_a_polygon_format(fruits, tmp_path: Path, capsys):
    assert command_main(["export", "--workspace", str(fruits), "--format", "coco", "--out", str(tmp_path / "x"),
                         "--exact-polygons"]) == 2
    assert "--exact-polygons applies to" in capsys.readouterr().err
