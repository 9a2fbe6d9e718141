"""ONNX export of the dense part: ONNX Runtime gives the parity fixtures' detections through the same
`Predictor.results` path as PyTorch."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

from condinst.export import OnnxHeads  # noqa: E402
from condinst.predictor import Predictor  # noqa: E402
from condinst.preprocess import read_image  # noqa: E402
from testutils import REPO  # noqa: E402


@pytest.fixture(scope="module", params=["tiny", "tiny_sem", "bifpn_tiny"])
def exported(request, parity_dir, tmp_path_factory):
    folder = parity_dir / request.param
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    proc = subprocess.run([sys.executable, "-m", "condinst", "export", "--weights", str(folder / "state_dict.pth"),
                           "--output", str(path)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return folder, path


def test_onnx_runtime_gives_the_reference_detections(exported):
    folder, path = exported
    onnx.checker.check_model(onnx.load(str(path)))
    meta = json.loads((folder / "meta.json").read_text())
    sizes = dict(min_size=meta["min_size_test"], max_size=meta["max_size_test"])
    ref = Predictor.from_weights(folder / "state_dict.pth", optimize=False, **sizes)
    ort = Predictor.from_weights(path, **sizes)
    image = read_image(folder / "input.png")
    a, b = ref(image)[0], ort(image)[0]
    assert len(a) == len(b) > 0
    assert torch.equal(a.classes, b.classes)
    assert (a.boxes - b.boxes).abs().max() <= 1e-2 and (a.scores - b.scores).abs().max() <= 1e-4
    inter = (a.masks & b.masks).sum((1, 2)).float()
    union = (a.masks | b.masks).sum((1, 2)).float()
    assert torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).min() >= 0.99


def test_dynamic_sizes_and_zero_detections(exported):
    folder, path = exported
    heads, ref = OnnxHeads(path), Predictor.from_weights(folder / "state_dict.pth")
    for h, w in ((128, 192), (320, 448), (256, 160)):
        batch = torch.randn(2, 3, h, w)
        a, b = ref.model.forward_heads(batch), heads.forward_heads(batch)
        for x, y in zip(a.cls_logits + a.params + [a.mask_feats], b.cls_logits + b.params + [b.mask_feats]):
            assert x.shape == y.shape
            assert (x - y).abs().max() <= 1e-3 * max(1.0, float(x.abs().max()))
    none = Predictor.from_weights(path, score_threshold=1.0)(np.zeros((50, 70, 3), np.uint8))[0]
    assert len(none) == 0 and none.masks.shape == (0, 50, 70)
