"""Every package the code imports is declared, and the two known `pip check` conflicts are harmless.

`pip check` reports two conflicts in the README's environment (README "Install"): trackers declares
opencv-python and datumaro declares opencv-python-headless<5, while requirements.txt pins
opencv-python-headless 5 (one `cv2` module for all). Both are installed --no-deps; the tests below show
their code paths run on our cv2. The full paths are also covered by tests/condinst/test_video_tracking.py,
tests/condinst/test_video_cli.py (ByteTrack, HOTA/CLEAR) and tests/app/test_interop_export.py (datumaro
reads our COCO exports).
"""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("condinst", "training", "app")
REQUIREMENTS = sorted(REPO.glob("requirements*.txt"))


def declared() -> set[str]:
    names = set()
    for path in REQUIREMENTS:
        for line in path.read_text().splitlines():
            match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==", line)
            if match:
                names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def imported_modules() -> dict[str, str]:
    """Top-level module -> first file importing it, over the project's packages (lazy imports included)."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_pinned_in_a_requirements_file():
    """Observed: condinst/video/reader.py imports av (PyAV), which arrived only through supervision."""
    distributions = importlib.metadata.packages_distributions()
    pinned = declared()
    missing = []
    for module, where in imported_modules().items():
        if module in sys.stdlib_module_names or module in PACKAGES or module not in distributions:
            continue  # standard library, ours, or not installed here (then the import itself is optional)
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions[module]}
        if not names & pinned:
            missing.append(f"{module} ({'/'.join(sorted(names))}, imported by {where})")
    assert not missing, f"imported but not pinned in {[p.name for p in REQUIREMENTS]}: {missing}"


def test_trackers_bytetrack_and_metrics_run_on_the_pinned_opencv():
    pytest.importorskip("trackers")
    import cv2
    import supervision as sv
    from trackers import ByteTrackTracker
    from trackers.eval.hota import compute_hota_metrics

    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("opencv-python")  # what trackers declares: not installed, one cv2 for all
    assert cv2.__version__.startswith("5.")
    tracker = ByteTrackTracker(minimum_consecutive_frames=1, frame_rate=30.0)
    ids = []
    for step in range(3):
        boxes = np.array([[10 + step, 10, 40 + step, 40], [100, 100 + step, 140, 140 + step]], dtype=np.float32)
        tracked = tracker.update(sv.Detections(xyxy=boxes, confidence=np.array([0.9, 0.9]),
                                               class_id=np.array([0, 0])))
        ids.append(sorted(int(t) for t in tracked.tracker_id if t >= 0))
    assert len(ids[-1]) == 2 and ids[-1] == ids[-2]  # two boxes, the same two ids frame after frame
    eye = np.eye(2)
    hota = compute_hota_metrics([np.arange(2)] * 3, [np.arange(2)] * 3, [eye] * 3)
    assert float(hota["HOTA"]) == pytest.approx(1.0)


def test_datumaro_reads_a_coco_file_on_the_pinned_opencv(tmp_path: Path):
    pytest.importorskip("datumaro")
    import json

    import cv2
    from datumaro.components.dataset import Dataset

    assert cv2.__version__.startswith("5.")  # datumaro declares opencv-python-headless<5

    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((20, 30, 3), np.uint8))
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 100.0,
                             "bbox": [5, 5, 10, 10], "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]]}],
            "categories": [{"id": 2, "name": "fig", "supercategory": ""}]}
    (tmp_path / "annotations" / "instances_default.json").write_text(json.dumps(coco))
    dataset = Dataset.import_from(str(tmp_path), "coco_instances")
    items = list(dataset)
    polygons = [a for a in items[0].annotations if type(a).__name__ == "Polygon"]
    assert len(items) == 1 and [a.id for a in polygons] == [5] and polygons[0].get_area() == pytest.approx(100)
    assert items[0].media.data.shape[:2] == (20, 30)  # the image decoded through our cv2
