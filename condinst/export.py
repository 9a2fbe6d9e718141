"""ONNX export of CondInst and its ONNX Runtime runner.

    python -m condinst export --weights model.pth [--config PRESET|YAML] --output model.onnx [--dense-only]

The default graph is the whole model (`onnx_graph.WholeGraph`): one normalised image padded to a
multiple of 32, (1, 3, H, W) of any size, to its final boxes, scores, classes and mask logits at
stride 4, with the test settings (score threshold, NMS IoU, pre/post-NMS top-k) as inputs whose
defaults are the config's. `OnnxModel` runs it; `Predictor` then pastes the masks at the original
size with the same `postprocess` as the PyTorch path. `--dense-only` writes only the dense part
(backbone, FPN/BiFPN, heads, controller, mask branch) for any batch (`OnnxHeads` runs it).
The config (architecture, classes, test settings) is stored as JSON in the file's metadata.
SipMask checkpoints export their own whole graph (`sipmask.onnx.SipMaskWholeGraph`: NMS and mask
assembly in the graph, the resize to the original image in the runner); `OnnxModel` runs both.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

import numpy as np

from .arch import config_from_dict
from .config import CondInstConfig
from .detections import Detections, level_locations
from .errors import UserError
from .model import CondInst, HeadOutputs, InstanceResult

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


GRAPH_KEY = "condinst_graph"  # "whole" (image -> detections and masks) or "dense" (image -> head maps)
SETTINGS_KEY = "condinst_test_settings"


def _with_metadata(graph, cfg: CondInstConfig, kind: str, defaults: dict | None = None):
    for key, value in ((CONFIG_KEY, json.dumps(cfg.to_dict())), (GRAPH_KEY, kind),
                       (SETTINGS_KEY, json.dumps({k: v.item() for k, v in (defaults or {}).items()}))):
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    return graph


def export_onnx(model: CondInst, cfg: CondInstConfig, path: str | os.PathLike, opset: int = 17,
                dense_only: bool = False) -> Path:
    """Write `model` (eval mode) to `path`: the whole graph (`onnx_graph.WholeGraph`: one image of
    any size -> detections and mask logits, test settings as inputs with the config's values as
    defaults; a SipMask model: `sipmask.onnx.SipMaskWholeGraph`) or, with `dense_only` (CondInst
    only), the dense part (any batch and size -> head maps)."""
    import io

    import onnx

    from .io import atomic_write_bytes
    from .onnx_graph import CONTRACT_KEY, OUTPUTS, WholeGraph, contract, declare_output_shapes, default_settings

    if dense_only and _is_sipmask(cfg):
        raise ExportError("--dense-only is for CondInst models; SipMask exports as the whole graph only")
    model = model.eval()
    example = torch.zeros(1, 3, 320, 320).contiguous(memory_format=torch.channels_last)
    buffer = io.BytesIO()
    if dense_only:
        module, args, inputs, outputs = _DenseGraph(model), (example,), ["images"], OUTPUT_NAMES
        dynamic = {"images": {0: "batch", 2: "height", 3: "width"}}
        dynamic.update({name: {0: "batch", 2: f"{name}_h", 3: f"{name}_w"} for name in OUTPUT_NAMES})
        defaults = {}
    elif _is_sipmask(cfg):
        from .sipmask import onnx as sipmask_onnx

        defaults = default_settings(cfg)
        example = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))
        module, outputs = sipmask_onnx.SipMaskWholeGraph(model, cfg), list(sipmask_onnx.OUTPUTS)
        inputs = ["images", *defaults, *sipmask_onnx.EXTRA_INPUTS]  # + input_size (h, w), scale_factor (4,)
        args = (example, *defaults.values(), torch.tensor([320.0, 320.0]), torch.ones(4))
        dynamic = {"images": {2: "height", 3: "width"}}
        dynamic.update({name: {0: "detections"} for name in outputs})
        dynamic["mask_probs"].update({1: "mask_h", 2: "mask_w"})
    else:
        defaults = default_settings(cfg)
        # A random image gives candidates and detections while tracing (every branch of the graph runs).
        example = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))
        module, inputs, outputs = WholeGraph(model, cfg), ["images", *defaults], list(OUTPUTS)
        args = (example, *defaults.values())
        if cfg.fcos.clip_boxes_at_decode:
            inputs.append("input_size")
            args = (*args, torch.tensor([320.0, 320.0]))
        dynamic = {"images": {2: "height", 3: "width"}}
        dynamic.update({name: {0: "detections"} for name in OUTPUTS})
        dynamic["mask_logits"].update({2: "mask_h", 3: "mask_w"})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python branches, checked by the tests
        torch.onnx.export(module.eval(), args, buffer, input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    # The settings are plain inputs (an initializer default made ONNX Runtime warn once per input at every
    # session); their defaults are in the metadata (SETTINGS_KEY, and the contract of a CondInst graph).
    _with_metadata(graph, cfg, "dense" if dense_only else "whole", defaults)
    if not dense_only and not _is_sipmask(cfg):
        declare_output_shapes(graph)
        entry = graph.metadata_props.add()
        entry.key, entry.value = CONTRACT_KEY, json.dumps(contract(cfg))
    onnx.checker.check_model(graph)
    path = Path(path)
    atomic_write_bytes(path, graph.SerializeToString())
    return path


def _is_sipmask(cfg) -> bool:
    return getattr(cfg, "arch", "condinst") == "sipmask"


def _session(path: str | os.PathLike, threads: int | None):
    """(ONNX Runtime session, metadata, config) of a file we exported; ExportError (one line) for
    anything else: not ONNX, empty, truncated, another model's graph, a config that does not load."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the warning about overridable (initializer) inputs
    # Idle pool threads sleep instead of spinning: spinning threads take the cores from the mask pasting that
    # follows each run and from other processes (bench/README.md: 2x faster end to end on a busy 2-core machine).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own classes (InvalidProtobuf, InvalidGraph, Fail, ...): the file's fault
        raise ExportError(f"{path}: not a readable ONNX model ({_first_line(e)})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if CONFIG_KEY not in meta:
        raise ExportError(f"{path}: not a CondInst ONNX file (no {CONFIG_KEY!r} metadata)")
    try:
        cfg = config_from_dict(json.loads(meta[CONFIG_KEY])).validate()
    except (ValueError, TypeError, KeyError, AttributeError, UserError) as e:  # JSONDecodeError is a ValueError
        raise ExportError(f"{path}: its {CONFIG_KEY!r} metadata is not a model config ({_first_line(e)})") from None
    return session, meta, cfg


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _check_graph(session, path, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    """ExportError unless the graph has the inputs and outputs our runner feeds and reads."""
    have_in = {i.name for i in session.get_inputs() + session.get_overridable_initializers()}
    have_out = {o.name for o in session.get_outputs()}
    missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
    if missing:
        raise ExportError(f"{path}: not a graph written by `python -m condinst export` (no {', '.join(missing)}); "
                          "export the checkpoint again")


class ExportError(UserError):
    """An ONNX file that this runner cannot use."""


BACKENDS = ("onnxruntime", "openvino")


class _OpenVino:
    """An ONNX file compiled by OpenVINO for the CPU, run like an ONNX Runtime session."""

    def __init__(self, path: str | os.PathLike, threads: int | None):
        import tempfile

        import onnx
        import openvino as ov

        from .onnx_graph import SETTINGS

        # OpenVINO folds initializers into constants: drop the settings' defaults so that they stay inputs.
        graph = onnx.load(str(path))
        kept = [t for t in graph.graph.initializer if t.name not in SETTINGS]
        del graph.graph.initializer[:]
        graph.graph.initializer.extend(kept)
        core = ov.Core()
        with tempfile.TemporaryDirectory() as tmp:
            onnx.save(graph, f"{tmp}/model.onnx")
            model = core.read_model(f"{tmp}/model.onnx")
        config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        self.compiled = core.compile_model(model, "CPU", config)
        self.input_names = {name for port in self.compiled.inputs for name in port.get_names()}

    def run(self, names: list[str], feeds: dict) -> list[np.ndarray]:
        out = self.compiled.create_infer_request().infer(feeds)
        return [np.asarray(out[self.compiled.output(name)]) for name in names]


class OnnxModel:
    """The whole exported graph run by ONNX Runtime or OpenVINO on the CPU, image by image:
    `inference(batch, input_sizes, cfg) -> list[InstanceResult]` like `CondInst.inference`."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, backend: str = "onnxruntime"):
        if backend not in BACKENDS:
            raise ExportError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.path = path
        self.session, meta, self.cfg = _session(path, threads)
        if meta.get(GRAPH_KEY, "dense") != "whole":
            raise ExportError(f"{path}: holds only the dense part of the model; export the whole graph "
                              "(python -m condinst export without --dense-only) to predict with it")
        if _is_sipmask(self.cfg):
            from .sipmask.onnx import EXTRA_INPUTS, OUTPUTS as SIPMASK_OUTPUTS

            _check_graph(self.session, path, ("images", *EXTRA_INPUTS), SIPMASK_OUTPUTS)
        else:
            from .onnx_graph import OUTPUTS

            _check_graph(self.session, path, ("images",), OUTPUTS)
        # Inputs with defaults are "overridable initializers" to ONNX Runtime, not inputs.
        self.input_names = {i.name for i in self.session.get_inputs() + self.session.get_overridable_initializers()}
        if backend == "openvino":
            self.session = _OpenVino(path, threads)
            self.input_names = self.session.input_names

    def feeds(self, image: torch.Tensor, input_size: tuple[int, int], cfg: CondInstConfig) -> dict:
        """Graph inputs for one (1, 3, Hp, Wp) image: the test settings of `cfg` override the defaults."""
        f = cfg.fcos
        feeds = {"images": image.detach().cpu().contiguous().numpy(),
                 "score_threshold": np.array(f.score_threshold, np.float32),
                 "nms_threshold": np.array(f.nms_threshold, np.float32),
                 "pre_nms_topk": np.array(f.pre_nms_topk, np.int64),
                 "post_nms_topk": np.array(f.post_nms_topk, np.int64),
                 "input_size": np.array(input_size, np.float32)}
        return {k: v for k, v in feeds.items() if k in self.input_names}

    def run(self, names, feeds: dict) -> dict[str, torch.Tensor]:
        """The graph's outputs `names` for `feeds`, as tensors by name (ExportError when the graph fails)."""
        try:
            arrays = self.session.run(list(names), feeds)
        except Exception as e:  # a runtime's error running a graph that loaded: the file does not fit this runner
            raise ExportError(f"{self.path}: the ONNX graph failed ({_first_line(e)})") from None
        return dict(zip(names, (torch.from_numpy(a) for a in arrays)))

    def inference(self, images: torch.Tensor, input_sizes: list[tuple[int, int]],
                  cfg: CondInstConfig | None = None) -> list[InstanceResult]:
        """images (B, 3, Hp, Wp), each run alone at the batch's padded size (as in a PyTorch batch)."""
        from .onnx_graph import OUTPUTS

        cfg = cfg or self.cfg
        if _is_sipmask(cfg):  # the graph needs the resize factor: it runs when the original size is known
            from .sipmask.onnx import SipMaskGraphImage

            return [SipMaskGraphImage(self, self.feeds(image[None], size, cfg))
                    for image, size in zip(images, input_sizes)]
        results = []
        for image, size in zip(images, input_sizes):
            t = self.run(OUTPUTS, self.feeds(image[None], size, cfg))
            det = Detections(boxes=t["boxes"], scores=t["scores"], classes=t["classes"], locations=t["locations"],
                             fpn_levels=t["fpn_levels"], params=t["params"], grid_index=t["grid_index"])
            results.append(InstanceResult(det, t["mask_logits"]))
        return results


class OnnxHeads:
    """An exported dense graph (`export_onnx(dense_only=True)`) run by ONNX Runtime:
    `forward_heads(images) -> HeadOutputs`, for runtimes that do their own post-processing."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.session, _, self.cfg = _session(path, threads)
        _check_graph(self.session, path, ("images",), tuple(OUTPUT_NAMES))

    def forward_heads(self, images: torch.Tensor) -> HeadOutputs:
        arrays = self.session.run(OUTPUT_NAMES, {"images": images.detach().cpu().contiguous().numpy()})
        t = [torch.from_numpy(a) for a in arrays]
        cls, reg, ctr, params = t[0:5], t[5:10], t[10:15], t[15:20]
        return HeadOutputs(features=cls, cls_logits=cls, bbox_reg=reg, ctrness=ctr, params=params, mask_feats=t[20],
                           locations=level_locations(cls, self.cfg.fcos.strides))
