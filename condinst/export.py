"""ONNX export of the dense part of CondInst (backbone, FPN/BiFPN, FCOS head, controller, mask branch).

    python -m condinst export --weights model.pth [--config PRESET|YAML] --output model.onnx

The graph maps the normalised, padded batch (B, 3, H, W), H and W any multiples of 32, to the
per-level class logits, box regression, centerness, controller outputs and the mask features. The
config (architecture, classes, test settings) is stored as JSON in the file's metadata. Decoding,
NMS, the dynamic mask head and mask pasting are not in the graph: they run in `Predictor.results`,
the same code as for the PyTorch model (see `OnnxHeads`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .config import CondInstConfig
from .detections import level_locations
from .model import CondInst, HeadOutputs

LEVELS = ("p3", "p4", "p5", "p6", "p7")
OUTPUT_NAMES = [f"{kind}_{level}" for kind in ("cls_logits", "bbox_reg", "ctrness", "params") for level in LEVELS]
OUTPUT_NAMES.append("mask_feats")
CONFIG_KEY = "condinst_config"


class _DenseGraph(nn.Module):
    def __init__(self, model: CondInst):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        out = self.model.forward_heads(images)
        return (*out.cls_logits, *out.bbox_reg, *out.ctrness, *out.params, out.mask_feats)


def export_onnx(model: CondInst, cfg: CondInstConfig, path: str | os.PathLike, opset: int = 17) -> Path:
    """Write the dense part of `model` (eval mode) to `path` with dynamic batch and image size."""
    import onnx

    from .io import atomic_write_bytes

    model = model.eval()
    h = w = 64 * 5
    example = torch.zeros(1, 3, h, w).contiguous(memory_format=torch.channels_last)
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}}
    for name in OUTPUT_NAMES:
        dynamic[name] = {0: "batch", 2: f"{name}_h", 3: f"{name}_w"}
    import io

    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(_DenseGraph(model).eval(), (example,), buffer, input_names=["images"], output_names=OUTPUT_NAMES,
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    entry = graph.metadata_props.add()
    entry.key, entry.value = CONFIG_KEY, json.dumps(cfg.to_dict())
    onnx.checker.check_model(graph)
    path = Path(path)
    atomic_write_bytes(path, graph.SerializeToString())
    return path


class OnnxHeads:
    """The exported dense graph run by ONNX Runtime: `forward_heads(images) -> HeadOutputs`."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.cfg = CondInstConfig.from_dict(json.loads(meta[CONFIG_KEY])).validate()

    def forward_heads(self, images: torch.Tensor) -> HeadOutputs:
        arrays = self.session.run(OUTPUT_NAMES, {"images": images.detach().cpu().contiguous().numpy()})
        t = [torch.from_numpy(a) for a in arrays]
        cls, reg, ctr, params = t[0:5], t[5:10], t[10:15], t[15:20]
        return HeadOutputs(features=cls, cls_logits=cls, bbox_reg=reg, ctrness=ctr, params=params, mask_feats=t[20],
                           locations=level_locations(cls, self.cfg.fcos.strides))
