"""The ONNX model's contract: declared shapes, the `condinst_contract` metadata, no onnxruntime warnings, and
examples/onnx_predict.py (onnxruntime, numpy, OpenCV only) reproducing `condinst predict` on the samples."""
from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "assets/default_model/model.pth"
SAMPLES = sorted((REPO / "assets/samples").glob("*.jpg"))
EXAMPLE = REPO / "examples/onnx_predict.py"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    if not WEIGHTS.is_file():
        pytest.skip("the bundled default model is missing")
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    done = subprocess.run([sys.executable, "-m", "condinst", "export", "--weights", str(WEIGHTS), "--output", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    return path


def example():
    spec = importlib.util.spec_from_file_location("onnx_predict", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_declared_shapes_and_contract_metadata(exported):
    model = onnx.load(str(exported))
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert shapes["mask_logits"] == ["detections", 1, "mask_h", "mask_w"]  # was [detections, detections, h, w]
    assert shapes["boxes"] == ["detections", 4] and shapes["locations"] == ["detections", 2]
    contract = json.loads({p.key: p.value for p in model.metadata_props}["condinst_contract"])
    images = contract["inputs"]["images"]
    assert images["layout"] == "NCHW" and images["dtype"] == "float32" and images["channels"] in ("BGR", "RGB")
    assert len(images["pixel_mean"]) == 3 and images["size_divisibility"] == 32
    assert contract["inputs"]["score_threshold"]["default"] == pytest.approx(0.05, abs=0.5)
    assert contract["outputs"]["mask_logits"]["shape"] == shapes["mask_logits"] and contract["postprocess"]
    assert contract["class_names"] == ["date", "fig", "hazelnut"]


def test_a_session_prints_no_warnings(exported, capfd):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 1  # info and up: the 4 "Initializer ... appears in graph inputs" were warnings
    capfd.readouterr()
    ort.InferenceSession(str(exported), options, providers=["CPUExecutionProvider"])
    err = capfd.readouterr().err
    assert "[W:" not in err and "appears in graph inputs" not in err


def test_the_example_needs_only_onnxruntime_numpy_and_opencv():
    tree = ast.parse(EXAMPLE.read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert modules - set(sys.stdlib_module_names) == {"onnxruntime", "numpy", "cv2"}


@pytest.mark.slow  # a subprocess or a server per case: the full suite runs it
def test_the_example_reproduces_condinst_predict_on_the_samples(exported):
    from condinst.predictor import Predictor
    from condinst.preprocess import read_image

    runner = example()
    session, contract = runner.load(str(exported))
    predictor = Predictor.from_weights(WEIGHTS)  # what `condinst predict --weights model.pth` runs
    assert SAMPLES
    for sample in SAMPLES:
        ref = predictor(read_image(sample))[0]
        got = runner.predict(session, contract, cv2.imread(str(sample)))
        assert len(got) == len(ref) > 0
        assert [g["class"] for g in got] == [predictor.class_name(int(c)) for c in ref.classes]
        masks = ref.masks.numpy()
        ious = [(a & g["mask"]).sum() / max((a | g["mask"]).sum(), 1) for a, g in zip(masks, got)]
        assert min(ious) >= 0.99, (sample.name, min(ious))  # measured: min 0.9985, mean 0.9998
        assert np.abs(np.array([g["score"] for g in got]) - ref.scores.numpy()).max() < 1e-3
