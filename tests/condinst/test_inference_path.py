"""One inference path: every result comes from `Predictor.results`, every detection from one scoring
and box decoding, every config from `load_config`, and the command line reaches the trainer only
through entry points."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from condinst.checkpoint import CheckpointError, save_checkpoint
from condinst.cli import commands
from condinst.arch import get_preset
from condinst.config import ConfigError
from condinst.config_sources import load_config
from condinst.detections import cell_detections
from condinst.explain import Explainer
from condinst.model import CondInst
from condinst.predictor import Predictor
from testutils import REPO, randomize_, tiny_config


@pytest.fixture(scope="module")
def predictor():
    return Predictor(randomize_(CondInst(tiny_config()), seed=0).eval(), tiny_config())


@pytest.fixture(scope="module")
def photo():
    """A 200x260 photo: a horizontal ramp with one flat rectangle."""
    ramp = np.broadcast_to(np.linspace(0, 255, 260, dtype=np.uint8)[None, :, None], (200, 260, 3)).copy()
    ramp[40:150, 60:190] = (200, 30, 90)
    return ramp


# ---- one result path -------------------------------------------------------------------------

def test_every_detection_is_rebuilt_by_the_cell_decoder(predictor, photo):
    """The Explainer's single-cell detections use the same scores and boxes as the detector's."""
    out, _, _ = predictor.heads(photo)
    det = predictor.results(out, *_sizes(predictor, photo))[0].detections
    assert len(det) > 0
    for k in range(len(det)):
        level = int(det.fpn_levels[k])
        again = cell_detections(out.cls_logits[level][0], out.bbox_reg[level][0], out.ctrness[level][0],
                                out.params[level][0], out.locations[level], predictor.cfg.fcos.strides[level], level,
                                det.grid_index[k : k + 1], det.classes[k : k + 1], predictor.cfg.fcos)
        # same function; the sigmoid of one value may differ from the vectorised one by an ulp
        torch.testing.assert_close(again.scores, det.scores[k : k + 1], atol=1e-6, rtol=0)
        torch.testing.assert_close(again.boxes, det.boxes[k : k + 1], atol=1e-4, rtol=0)
        assert torch.equal(again.params, det.params[k : k + 1])
        assert torch.equal(again.locations, det.locations[k : k + 1])


def test_explainer_result_is_the_predictor_result(predictor, photo):
    ex = Explainer(predictor, photo)
    direct = predictor(photo)[0]
    assert torch.equal(ex.result().boxes, direct.boxes) and torch.equal(ex.result().masks, direct.masks)
    # the at-point detection of a detection's own location scores like that detection
    k = 0
    x, y = ex.instance(k).location
    point = ex.at_point(x, y, class_index=int(direct.classes[k]))
    assert point.explanation.score == pytest.approx(float(direct.scores[k]), abs=1e-6)


def _sizes(predictor, image):
    batch, sizes = predictor.prepare([image])
    return tuple(batch.shape[-2:]), sizes, [image.shape[:2]]


@pytest.mark.slow
def test_test_settings_do_not_touch_the_model_or_the_callers_config(tmp_path, photo):
    cfg = tiny_config()
    path = save_checkpoint(tmp_path / "m.pth", randomize_(CondInst(cfg), seed=0), cfg)
    loose = Predictor.from_weights(path, cfg)
    scores = loose(photo)[0].scores
    threshold = float(scores.median()) ** 2  # ranking score cls*ctr; the final score is its sqrt
    strict = Predictor.from_weights(path, cfg, score_threshold=threshold, min_size=256)
    assert strict.cfg.fcos.score_threshold == threshold and strict.cfg.input.min_size_test == 256
    assert cfg.fcos.score_threshold == 0.05 and cfg.input.min_size_test == 320
    assert strict.model.cfg.fcos.score_threshold == 0.05
    # Two predictors sharing one model keep their own settings, in any order of calls.
    shared = Predictor(strict.model, cfg)
    first = shared(photo)[0]
    assert len(strict(photo)[0]) < len(first) and (strict(photo)[0].scores > threshold ** 0.5 - 1e-6).all()
    assert torch.equal(shared(photo)[0].scores, first.scores)


# ---- one config front door ------------------------------------------------------------------------

def test_load_config_reads_every_source(tmp_path):
    cfg = tiny_config(num_classes=3)
    assert load_config(cfg) is cfg
    assert load_config("MS_R_50_1x").neck.out_channels == 256
    (tmp_path / "dump.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "wrapped.json").write_text(json.dumps({"config": cfg.to_dict()}))
    path = save_checkpoint(tmp_path / "m.pth", CondInst(cfg), cfg)
    for source in (tmp_path / "dump.json", str(tmp_path / "wrapped.json"), path, torch.load(path, weights_only=True),
                   cfg.to_dict()):
        assert load_config(source).to_dict() == cfg.to_dict(), source
    yaml = REPO / "configs"
    found = sorted(yaml.glob("*.yaml"))
    if found:
        assert load_config(found[0]).fcos.num_classes >= 1


def test_load_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config("NO_SUCH_PRESET")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "unknown.json").write_text(json.dumps({"backbone": {"depth": 50, "colour": 1}}))
    with pytest.raises(ConfigError, match="colour"):
        load_config(tmp_path / "unknown.json")
    bad = {"format": "condinst-studio", "model": {}, "config": {"backbone": {"depth": 7}}}
    with pytest.raises(CheckpointError, match="stored config is invalid"):
        load_config(bad)
    assert get_preset("MS_R_50_1x").to_dict() == load_config("MS_R_50_1x").to_dict()


# ---- the command line ------------------------------------------------------------------------------

def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.slow
def test_the_library_never_imports_the_trainer_or_the_app():
    offenders = {p.name: _imports(p) & {"training", "app"} for p in (REPO / "condinst").glob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}
    # Importing the whole library loads nothing of the trainer.
    modules = ", ".join(f"condinst.{p.stem}" for p in (REPO / "condinst").glob("*.py") if p.stem != "__main__")
    proc = subprocess.run([sys.executable, "-c", f"import sys, {modules}; "
                           "print(sorted(m for m in sys.modules if m.split('.')[0] in ('training', 'app')))"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_training_commands_come_from_entry_points():
    available = commands()
    if "train" not in available:
        pytest.skip("the project's entry points are not installed here (pip install -e .)")
    from training.cli import EVALUATE, TRAIN

    assert available["train"] is TRAIN and available["evaluate"] is EVALUATE
    proc = subprocess.run([sys.executable, "-m", "condinst", "train", "--config", "NO_SUCH_PRESET",
                           "--train-ann", "a.json", "--train-images", ".", "--output-dir", "out"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:"), proc.stderr
