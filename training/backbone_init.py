"""Initial weights for training: ImageNet backbones or CondInst checkpoints.

    init = read_init_weights("R-50.pkl")         # what the file is, its tensors
    notes = adapt_config_to_init(cfg, init)      # e.g. torchvision weights -> pytorch-style ResNet, RGB input
    model = CondInst(cfg)
    report = apply_init_weights(model, init)     # copy the tensors, re-initialise class-specific layers

Understood files:
  * detectron2 ImageNet pickles `R-50.pkl` / `R-101.pkl` (MSRA caffe2 blobs, numpy arrays, maybe wrapped
    as {"model": ..., "__author__": ...} or {"blobs": ...}). They are read with a restricted unpickler
    that can only rebuild numpy arrays (plain `pickle.load` would run arbitrary code). Names are
    converted as detectron2's `convert_basic_c2_names` does (spec §1f); FrozenBN statistics absent
    from the file stay at running_mean 0 / running_var 1.
  * torchvision `resnet50` / `resnet101` state dicts (`conv1`, `bn1`, `layer1.0.conv1`, ...): these are
    pytorch-style ResNets (stride in the 3x3 conv) trained on RGB images with ImageNet mean/std, so
    the config is switched to backbone.style="pytorch" and that input normalisation.
  * any CondInst checkpoint `condinst.checkpoint` understands (ours, AdelaiDet, mmdetection), for
    fine-tuning: every tensor is loaded; when the number (or names) of classes differ, the
    class-specific layers (`cls_logits`, `mask_branch.logits`) keep their fresh initialisation
    (std 0.01, prior-probability bias).
"""
from __future__ import annotations

import dataclasses
import importlib
import io
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from condinst.checkpoint import (IGNORED_KEYS, CheckpointError, config_from_checkpoint, mismatch_summary,
                                 read_checkpoint, split_checkpoint)
from condinst.config import TORCHVISION_PIXEL_MEAN, TORCHVISION_PIXEL_STD, CondInstConfig

logger = logging.getLogger(__name__)

# Layers whose shape depends on the number of classes; re-initialised when fine-tuning to new classes.
CLASS_SPECIFIC_PREFIXES = ("proposal_generator.fcos_head.cls_logits.", "mask_branch.logits.")
# Training-only layers that may be absent from (or extra in) a checkpoint.
OPTIONAL_PREFIXES = ("mask_branch.seg_head.", "mask_branch.logits.")
IMAGENET_URLS = {
    50: "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl",
    101: "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-101.pkl",
}


@dataclass
class InitWeights:
    """The tensors of an initialisation file and what they are.

    kind: "backbone" (an ImageNet ResNet; keys relative to the ResNet: `stem.conv1.weight`,
          `res2.0.conv1.norm.weight`, ...) or "condinst" (a whole model, our key names).
    style: the ResNet layout the weights were trained with ("caffe" / "pytorch").
    """

    path: Path
    kind: str
    source: str  # "detectron2-pkl", "torchvision", "detectron2-backbone", "condinst-studio", "adelaidet", "mmdet"
    state_dict: dict[str, torch.Tensor]
    style: str
    config: CondInstConfig | None = None  # the stored / inferred config of a CondInst checkpoint


@dataclass
class InitReport:
    """What `apply_init_weights` did."""

    source: str
    loaded: int = 0
    reinitialized: list[str] = field(default_factory=list)
    kept_fresh: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"initialised {self.loaded} tensors from {self.source}"]
        if self.reinitialized:
            parts.append(f"re-initialised class-specific layers: {', '.join(self.reinitialized)}")
        if self.kept_fresh:
            parts.append(f"not in the file (fresh init): {', '.join(self.kept_fresh[:6])}"
                         + (" ..." if len(self.kept_fresh) > 6 else ""))
        if self.dropped:
            parts.append(f"unused from the file: {', '.join(self.dropped[:6])}" + (" ..." if len(self.dropped) > 6 else ""))
        return "; ".join(parts)


# ---- reading ----------------------------------------------------------------------------------------

class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, dtypes and plain containers, and refuses anything else.

    A pickle can name any importable callable; only the handful numpy needs to reconstruct arrays
    are resolved here, so a malicious `.pkl` fails with UnpicklingError instead of running code.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}: only numpy arrays are allowed")
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core."):] if hasattr(np, "_core") else module
        return getattr(importlib.import_module(module), name)


def load_numpy_pickle(path: str | os.PathLike) -> Any:
    """Safely read a (Python 2 or 3) pickle of numpy arrays."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - corrupt pickles raise many types
        raise CheckpointError(f"{path}: not a readable pickle of numpy arrays ({type(e).__name__}: {e})") from None


def convert_c2_name(key: str) -> str:
    """detectron2's `convert_basic_c2_names` for one caffe2 blob name (e.g. res2_0_branch2a_bn_s)."""
    key = {"pred_b": "linear_b", "pred_w": "linear_w"}.get(key, key)
    key = key.replace("_", ".")
    key = re.sub(r"\.b$", ".bias", key)
    key = re.sub(r"\.w$", ".weight", key)
    key = re.sub(r"bn\.s$", "norm.weight", key)
    key = re.sub(r"bn\.bias$", "norm.bias", key)
    key = re.sub(r"bn\.rm", "norm.running_mean", key)
    key = re.sub(r"bn\.running.mean$", "norm.running_mean", key)
    key = re.sub(r"bn\.riv$", "norm.running_var", key)
    key = re.sub(r"bn\.running.var$", "norm.running_var", key)
    key = re.sub(r"bn\.gamma$", "norm.weight", key)
    key = re.sub(r"bn\.beta$", "norm.bias", key)
    key = re.sub(r"gn\.s$", "norm.weight", key)
    key = re.sub(r"gn\.bias$", "norm.bias", key)
    key = re.sub(r"^res\.conv1\.norm\.", "conv1.norm.", key)
    key = re.sub(r"^conv1\.", "stem.conv1.", key)
    key = key.replace(".branch1.", ".shortcut.")
    key = key.replace(".branch2a.", ".conv1.")
    key = key.replace(".branch2b.", ".conv2.")
    key = key.replace(".branch2c.", ".conv3.")
    return key


def convert_torchvision_name(key: str) -> str | None:
    """torchvision ResNet key -> detectron2 ResNet key (None for the classifier / BN counters)."""
    if key.startswith("fc.") or key.endswith("num_batches_tracked"):
        return None
    key = re.sub(r"^conv1\.", "stem.conv1.", key)
    key = re.sub(r"^bn1\.", "stem.conv1.norm.", key)
    m = re.match(r"^layer(\d)\.(\d+)\.(.*)$", key)
    if m:
        rest = m[3]
        rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
        rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
        rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
        key = f"res{int(m[1]) + 1}.{m[2]}.{rest}"
    return key


_RESNET_KEY = re.compile(r"(?:^|\.)((?:stem|res[2-5])\.(?:\d+\.)?.*)$")


def _to_tensor_dict(d: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            out[k] = v
        elif isinstance(v, np.ndarray):
            out[k] = torch.from_numpy(np.ascontiguousarray(v))
        elif isinstance(v, (np.generic, int, float)):
            out[k] = torch.as_tensor(v)
        else:
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not an array")
    return out


def _backbone_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the ResNet tensors of a detectron2-named dict, with any prefix (`backbone.bottom_up.`) removed."""
    out = {}
    for k, v in sd.items():
        m = _RESNET_KEY.search(k)
        if m and not k.endswith("num_batches_tracked"):
            out[m[1]] = v
    return out


def read_init_weights(path: str | os.PathLike) -> InitWeights:
    """Read and classify an initialisation file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.suffix == ".pkl":
        return _read_detectron2_pickle(path)
    obj = read_checkpoint(path)
    # A bare or wrapped ImageNet ResNet (torchvision, or detectron2 names)?
    inner = obj
    for wrapper in ("state_dict", "model"):
        if isinstance(inner.get(wrapper), dict) and "format" not in inner:
            inner = inner[wrapper]
            break
    keys = [k[len("module."):] if k.startswith("module.") else k for k in inner]
    stripped = [k[len("backbone."):] if k.startswith("backbone.") else k for k in keys]
    is_detector = any(k.startswith(("proposal_generator.", "bbox_head.", "controller.", "mask_branch.", "neck."))
                      for k in keys)
    if not is_detector and any(k.startswith("layer1.") for k in stripped):
        sd = {}
        for k, v in zip(stripped, inner.values()):
            new = convert_torchvision_name(k)
            if new is not None and isinstance(v, torch.Tensor):
                sd[new] = v
        return InitWeights(path, "backbone", "torchvision", sd, style="pytorch")
    if not is_detector and any(k.startswith(("stem.", "res2.", "bottom_up.")) for k in stripped):
        sd = _backbone_keys(_to_tensor_dict(dict(zip(keys, inner.values())), path))
        return InitWeights(path, "backbone", "detectron2-backbone", sd, style="caffe")
    sd, kind, extras = split_checkpoint(obj)
    cfg = config_from_checkpoint(extras, sd, kind)
    return InitWeights(path, "condinst", kind, sd, style=cfg.backbone.style, config=cfg)


def _read_detectron2_pickle(path: Path) -> InitWeights:
    data = load_numpy_pickle(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of numpy arrays, found {type(data).__name__}")
    author = ""
    if "model" in data and "__author__" in data:  # detectron2 model-zoo format
        author = str(data["__author__"])
        blobs = data["model"]
    else:  # caffe2 / Detectron1
        blobs = data.get("blobs", data)
    if not isinstance(blobs, dict):
        raise CheckpointError(f"{path}: no dict of arrays inside the pickle")
    blobs = {k: v for k, v in blobs.items() if isinstance(k, str) and not k.endswith("_momentum")}
    renamed = {}
    for k, v in blobs.items():
        name = convert_c2_name(k) if "." not in k else k
        renamed[name] = v
    sd = _backbone_keys(_to_tensor_dict({k: v for k, v in renamed.items() if isinstance(v, (np.ndarray, torch.Tensor))},
                                        path))
    if not sd:
        raise CheckpointError(f"{path}: no ResNet weights found (expected caffe2 names like res2_0_branch2a_w)")
    style = "pytorch" if author.lower() == "torchvision" else "caffe"
    return InitWeights(path, "backbone", "detectron2-pkl", sd, style=style)


# ---- config --------------------------------------------------------------------------------------

def adapt_config_to_init(cfg: CondInstConfig, init: InitWeights | None) -> list[str]:
    """Make `cfg` (in place) match how the initial weights were trained; returns messages for the log.

    * torchvision (pytorch-style) ResNet: backbone.style "pytorch", RGB input with ImageNet mean/std;
    * MSRA caffe2 ResNet: backbone.style "caffe", BGR 0-255 minus the caffe mean, std 1 (the presets);
    * CondInst checkpoint: its backbone style and input normalisation.
    """
    notes: list[str] = []
    if init is None:
        if cfg.backbone.norm == "FrozenBN":
            notes.append("no --weights: training from scratch with a FrozenBN ResNet (identity statistics, the "
                         "backbone is not normalised); expect poor accuracy (AdelaiDet#214). Set backbone.norm to "
                         "GN to train from scratch, or for the official recipe pass the ImageNet backbone "
                         f"--weights R-{cfg.backbone.depth}.pkl ({IMAGENET_URLS.get(cfg.backbone.depth, '')}).")
        else:
            notes.append(f"no --weights: training from scratch ({cfg.backbone.norm} ResNet, random initialisation)")
        return notes
    if init.kind == "condinst" and init.config is not None:
        stored = init.config
        if (cfg.backbone.style, cfg.input.format, tuple(cfg.input.pixel_mean), tuple(cfg.input.pixel_std)) != (
                stored.backbone.style, stored.input.format, tuple(stored.input.pixel_mean), tuple(stored.input.pixel_std)):
            notes.append(f"{init.path.name}: using the checkpoint's backbone style ({stored.backbone.style}) and input "
                         f"normalisation ({stored.input.format}, mean {tuple(stored.input.pixel_mean)})")
        cfg.backbone = dataclasses.replace(cfg.backbone, style=stored.backbone.style)
        cfg.input = dataclasses.replace(cfg.input, format=stored.input.format, pixel_mean=stored.input.pixel_mean,
                                        pixel_std=stored.input.pixel_std)
        return notes
    if init.style == "pytorch":
        if cfg.backbone.style != "pytorch" or cfg.input.format != "RGB":
            notes.append(f"{init.path.name} is a torchvision (pytorch-style) ResNet: switching to backbone.style="
                         "'pytorch' (stride in the 3x3 conv) and RGB input with ImageNet mean/std. The official "
                         "recipe uses the MSRA R-50.pkl (caffe style).")
        cfg.backbone = dataclasses.replace(cfg.backbone, style="pytorch")
        cfg.input = dataclasses.replace(cfg.input, format="RGB", pixel_mean=TORCHVISION_PIXEL_MEAN,
                                        pixel_std=TORCHVISION_PIXEL_STD)
    elif cfg.backbone.style != "caffe" or cfg.input.format != "BGR":
        from condinst.config import CAFFE_PIXEL_MEAN, CAFFE_PIXEL_STD

        notes.append(f"{init.path.name} is an MSRA (caffe-style) ResNet: switching to backbone.style='caffe' and "
                     "BGR 0-255 input minus the caffe mean, std 1")
        cfg.backbone = dataclasses.replace(cfg.backbone, style="caffe")
        cfg.input = dataclasses.replace(cfg.input, format="BGR", pixel_mean=CAFFE_PIXEL_MEAN, pixel_std=CAFFE_PIXEL_STD)
    return notes


# ---- loading -------------------------------------------------------------------------------------

def _bottom_up_prefix(model: nn.Module) -> str:
    for k in model.state_dict():
        if k.endswith("stem.conv1.weight"):
            return k[: -len("stem.conv1.weight")]
    raise CheckpointError("the model has no ResNet stem (stem.conv1.weight)")


def _copy(own: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    with torch.no_grad():
        own[key].copy_(value.to(own[key].dtype))


def apply_backbone_weights(model: nn.Module, init: InitWeights) -> InitReport:
    """Copy an ImageNet ResNet into the model's bottom-up network.

    Every ResNet weight of the model must be in the file with the same shape (else CheckpointError:
    e.g. R-101 weights for an R-50 config); missing FrozenBN running statistics stay 0 / 1.
    """
    prefix = _bottom_up_prefix(model)
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    report = InitReport(source=f"{init.path.name} ({init.source}, {init.style}-style ResNet)")
    missing, mismatched = [], []
    for key, tensor in own.items():
        name = key[len(prefix):]
        if name.endswith("num_batches_tracked"):
            continue
        value = init.state_dict.get(name)
        if value is None:
            if name.endswith(("running_mean", "running_var")):
                with torch.no_grad():
                    tensor.fill_(0.0 if name.endswith("running_mean") else 1.0)
                continue
            missing.append(name)
        elif tuple(value.shape) != tuple(tensor.shape):
            mismatched.append(f"{name}: file {tuple(value.shape)} vs model {tuple(tensor.shape)}")
        else:
            _copy(own, key, value)
            report.loaded += 1
    own_names = {k[len(prefix):] for k in own}
    extra = [k for k in init.state_dict if k not in own_names and not k.startswith(("linear.", "fc."))]
    summary = mismatch_summary(mismatched, missing, extra, limit=3,
                               missing_what="ResNet weight(s) missing from the file",
                               unexpected_what="ResNet weight(s) the model does not have")
    if summary:
        depth = model.cfg.backbone.depth if hasattr(model, "cfg") else "?"
        raise CheckpointError(f"{init.path}: the ImageNet weights do not fit the configured R-{depth} backbone "
                              "(wrong depth or width?): " + summary)
    return report


def _classes_differ(cfg: CondInstConfig, stored: CondInstConfig | None) -> bool:
    if stored is None:
        return False
    if stored.fcos.num_classes != cfg.fcos.num_classes:
        return True
    return bool(stored.class_names and cfg.class_names and tuple(stored.class_names) != tuple(cfg.class_names))


def apply_condinst_weights(model: nn.Module, init: InitWeights) -> InitReport:
    """Fine-tuning: load a whole CondInst checkpoint; class-specific layers are re-initialised when the
    classes differ; training-only semantic-head layers may be missing or extra. Anything else that
    does not fit raises CheckpointError."""
    cfg: CondInstConfig = model.cfg
    own = model.state_dict()
    sd = {k: v for k, v in init.state_dict.items() if k not in IGNORED_KEYS}
    report = InitReport(source=f"{init.path.name} ({init.source} CondInst checkpoint)")
    reinit_classes = _classes_differ(cfg, init.config)
    mismatched, missing = [], []
    for key, tensor in own.items():
        if key.endswith("num_batches_tracked") and key not in sd:
            continue
        if reinit_classes and key.startswith(CLASS_SPECIFIC_PREFIXES):
            report.reinitialized.append(key)
            continue
        if key not in sd:
            (report.kept_fresh if key.startswith(OPTIONAL_PREFIXES) else missing).append(key)
            continue
        if tuple(sd[key].shape) != tuple(tensor.shape):
            mismatched.append(f"{key}: checkpoint {tuple(sd[key].shape)} vs model {tuple(tensor.shape)}")
            continue
        _copy(own, key, sd[key])
        report.loaded += 1
    extra = [k for k in sd if k not in own and not k.endswith("num_batches_tracked")]
    report.dropped = [k for k in extra if k.startswith(OPTIONAL_PREFIXES)]
    extra = [k for k in extra if not k.startswith(OPTIONAL_PREFIXES)]
    summary = mismatch_summary(mismatched, missing, extra, limit=3)
    if summary:
        hint = ""
        if init.config is not None:
            s = init.config
            hint = (f" (the checkpoint looks like: {s.neck.kind}, R-{s.backbone.depth}, {s.fcos.num_classes} classes; "
                    "pick a --config with the same architecture)")
        raise CheckpointError(f"{init.path}: does not fit the configured model: " + summary + hint)
    # Collapse per-tensor names to layer names for the log.
    report.reinitialized = sorted({k.rsplit(".", 1)[0] for k in report.reinitialized})
    return report


def apply_init_weights(model: nn.Module, init: InitWeights | None) -> InitReport:
    """Load `init` into a freshly built model (see `apply_backbone_weights`, `apply_condinst_weights`)."""
    if init is None:
        return InitReport(source="scratch (random initialisation)")
    if init.kind == "backbone":
        return apply_backbone_weights(model, init)
    return apply_condinst_weights(model, init)
