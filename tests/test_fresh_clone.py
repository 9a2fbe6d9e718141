"""A newcomer's path: clone, set up with the README's command, segment a held-out sample.

Marked slow: it creates a new virtual environment and installs the pinned requirements.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from pycocotools import mask as mask_utils

from testutils import DATASETS, REPO, scaled

MODEL = REPO / "assets" / "default_model" / "model.pth"
SAMPLE = "assets/samples/fruits_nuts_9.jpg"  # image id 17 of fruits_nuts, held out from training
HELD_OUT_ID = 17


@pytest.mark.slow
def test_fresh_clone_sets_up_and_finds_the_fruits(tmp_path):
    ann = DATASETS / "fruits_nuts" / "data" / "trainval.json"
    if not MODEL.exists() or not ann.exists():
        pytest.skip("needs the bundled default model and shared/datasets/fruits_nuts")
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("needs git and make")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", f"file://{REPO}", str(clone)], check=True)
    # The README's test command builds its environment with `make venv`; do exactly that, from scratch.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    setup = subprocess.run(["make", "venv", f"VENV={tmp_path / 'venv'}"], cwd=clone, env=env,
                           capture_output=True, text=True, timeout=scaled(1800))
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    out = tmp_path / "results.json"
    proc = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-m", "condinst", "predict",
                           "--weights", "assets/default_model/model.pth", "--input", SAMPLE, "--output", str(out),
                           "--score-threshold", "0.3"], cwd=clone, capture_output=True, text=True, timeout=scaled(600))
    assert proc.returncode == 0, proc.stderr

    gt = json.loads(ann.read_text())
    image = next(im for im in gt["images"] if im["id"] == HELD_OUT_ID)
    gt_masks = []
    for a in gt["annotations"]:
        if a["image_id"] == HELD_OUT_ID:
            rles = mask_utils.frPyObjects(a["segmentation"], image["height"], image["width"])
            gt_masks.append(mask_utils.decode(mask_utils.merge(rles)).astype(bool))
    predictions = json.loads(out.read_text())
    pred_masks = [mask_utils.decode({**p["segmentation"], "counts": p["segmentation"]["counts"].encode()}).astype(bool)
                  for p in predictions]
    assert len(pred_masks) >= len(gt_masks) - 2
    found = 0
    for g in gt_masks:
        ious = [(g & m).sum() / max((g | m).sum(), 1) for m in pred_masks]
        found += bool(ious) and max(ious) >= 0.7
    assert found >= len(gt_masks) - 2, f"{found} of {len(gt_masks)} fruits found with mask IoU >= 0.7"
