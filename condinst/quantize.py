"""INT8 post-training static quantisation of an exported whole graph with ONNX Runtime.

    python -m condinst export --weights model.pth --output model_int8.onnx --int8-calibration photos/

The convolutions (the dense part: nearly all of the work) get per-channel INT8 weights and UINT8
activations in QDQ form, calibrated (min/max) on the user's images preprocessed exactly as for
prediction; decoding, NMS, the dynamic mask head and the settings inputs stay in fp32.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def quantize_int8(fp32_path: str | os.PathLike, output: str | os.PathLike, images: list[np.ndarray]) -> Path:
    """Write the INT8 version of the whole graph at `fp32_path` to `output`, calibrated on `images`
    (RGB uint8, any sizes), with the fp32 file's metadata."""
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from .export import OnnxModel
    from .io import atomic_write_bytes
    from .predictor import Predictor

    ort.set_default_logger_severity(3)  # the calibration sessions' notes on the augmented graph
    model = OnnxModel(fp32_path)
    predictor = Predictor(model)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(images)

        def get_next(self):
            image = next(self.items, None)
            if image is None:
                return None
            batch, sizes = predictor.prepare([image])
            return model.feeds(batch, sizes[0], model.cfg)  # the image and the settings inputs

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize_static(str(fp32_path), str(out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        graph = onnx.load(str(out))
    source = onnx.load(str(fp32_path), load_external_data=False)
    del graph.metadata_props[:]
    graph.metadata_props.extend(source.metadata_props)
    onnx.checker.check_model(graph)
    atomic_write_bytes(Path(output), graph.SerializeToString())
    return Path(output)
