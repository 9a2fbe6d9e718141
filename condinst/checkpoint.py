"""Loading and saving CondInst weights.

Three checkpoint layouts are understood:
  * AdelaiDet / detectron2 `.pth`: `{"model": state_dict, ...}` or a bare state dict, keys like
    `backbone.bottom_up.res2.0.conv1.weight` (our own module tree has the same names);
  * mmdetection v3: `{"state_dict": ..., "meta": ...}` with `backbone.layer1...`, `neck.*`, `bbox_head.*`,
    `mask_head.mask_feature_head.*` keys, renamed here onto ours;
  * ours: `{"format": "condinst-studio", "model": ..., "config": {...}}` carrying config and class names.

Files are opened with `torch.load(weights_only=True)`, so an untrusted file cannot run code. A state
dict that does not fit the model raises `CheckpointError` naming the first mismatching keys.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arch import config_from_dict, get_preset
from .coco import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from .config import CondInstConfig, ConfigError
from .dynamic_mask_head import param_layout
from .errors import CheckpointError
from .io import atomic_torch_save
from .mmdet_keys import convert_mmdet_state_dict
from .sipmask.checkpoint import KIND as SIPMASK_KIND, convert_sipmask_state_dict, infer_sipmask_config, \
    is_sipmask_state_dict

FORMAT_NAME = "condinst-studio"
FORMAT_VERSION = 1
# Buffers of the official DynamicMaskHead that carry no weights (BoxInst iteration counter, constants).
IGNORED_KEYS = ("mask_head._iter", "mask_head.sizes_of_interest")


# ---- reading --------------------------------------------------------------------------------

def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """torch.load a checkpoint safely onto the CPU; clear errors for missing, corrupt or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.suffix == ".pkl":
        raise CheckpointError(f"{path}: detectron2 .pkl files are ImageNet backbones for training "
                              "(use `condinst train --weights`), not CondInst detection weights")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        text = str(e)
        unsafe = re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)", text)
        if unsafe:  # a real pickle naming a Python object: torch.load(weights_only=False) would run its code
            raise CheckpointError(f"{path}: refused: the file contains Python objects besides tensors "
                                  f"({unsafe.group(1)}) and is not loaded, since it could run code") from None
        detail = re.search(r"Unsupported operand \d+", text)  # bytes that are no pickle at all
        msg = detail.group(0) if detail else (text.splitlines()[0] if text else type(e).__name__)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({msg})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def split_checkpoint(obj: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """-> (state dict in *our* key names, source format, the rest of the checkpoint).

    Formats: "condinst-studio", "adelaidet", "mmdet", "sipmask-mmdet" (an official SipMask checkpoint).
    """
    if obj.get("format") == FORMAT_NAME:
        sd, kind = obj["model"], FORMAT_NAME
    elif "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd, kind = obj["state_dict"], "mmdet"
    elif "model" in obj and isinstance(obj["model"], dict):
        sd, kind = obj["model"], "adelaidet"
    else:
        sd, kind = obj, "adelaidet"
    sd = {k: v for k, v in sd.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    for k in bad:  # fvcore also accepts numpy arrays
        try:
            sd[k] = torch.as_tensor(sd[k])
        except Exception:  # noqa: BLE001
            raise CheckpointError(f"entry {k!r} is a {type(sd[k]).__name__}, not a tensor") from None
    if kind == "adelaidet" and any(k.startswith(("bbox_head.", "neck.")) for k in sd):
        kind = "mmdet"
    if kind == "mmdet":
        if is_sipmask_state_dict(sd):
            sd, kind = convert_sipmask_state_dict(sd), SIPMASK_KIND
        else:
            sd = convert_mmdet_state_dict(sd)
    extras = {k: v for k, v in obj.items() if k not in ("model", "state_dict")}
    return sd, kind, extras


# ---- architecture from weights ---------------------------------------------------------------

def infer_config(sd: dict[str, torch.Tensor], kind: str) -> CondInstConfig:
    """Work out the architecture of an official checkpoint from its keys and shapes.

    AdelaiDet weights get the AdelaiDet inference recipe, mmdetection weights the mmdetection one.
    """
    cfg = get_preset("mmdet_condinst_r50_fpn_ms_poly_90k" if kind == "mmdet" else "MS_R_50_1x")
    cfg.name = "inferred-" + kind
    required = ("controller.weight", "proposal_generator.fcos_head.cls_logits.weight", "mask_branch.refine.0.0.weight")
    if not all(k in sd for k in required):
        raise CheckpointError(f"not a CondInst checkpoint: it has no {' / '.join(required)} "
                              f"(its first keys: {', '.join(list(sd)[:4])})")
    try:
        bifpn = any(k.startswith("backbone.repeated_bifpn.") for k in sd)
        rn = "backbone.bottom_up.backbone." if bifpn else "backbone.bottom_up."
        res4 = {int(m[1]) for k in sd if (m := re.match(re.escape(rn) + r"res4\.(\d+)\.", k))}
        depth = {6: 50, 23: 101}.get(len(res4))
        if depth is None:
            raise CheckpointError(f"unsupported ResNet: res4 has {len(res4)} blocks (ResNet-50 has 6, -101 has 23)")
        cfg.backbone.depth = depth
        cfg.backbone.stem_out_channels = sd[rn + "stem.conv1.weight"].shape[0]
        cfg.backbone.width_per_group = sd[rn + "res2.0.conv1.weight"].shape[0]
        cfg.backbone.res2_out_channels = sd[rn + "res2.0.conv3.weight"].shape[0]
        channels = sd["controller.weight"].shape[1]
        cfg.neck.out_channels = channels
        if bifpn:
            cfg.neck.kind = "bifpn"
            cfg.neck.bifpn_num_repeats = len({k.split(".")[2] for k in sd if k.startswith("backbone.repeated_bifpn.")})
        head = "proposal_generator.fcos_head."
        cfg.fcos.num_classes = sd[head + "cls_logits.weight"].shape[0]
        cfg.fcos.num_convs = len({k.split(".")[3] for k in sd if k.startswith(head + "cls_tower.")}) // 2
        cfg.fcos.use_scale = (head + "scales.0.scale") in sd
        tower = sorted({int(k.split(".")[2]) for k in sd if k.startswith("mask_branch.tower.")})
        cfg.mask_branch.channels = sd["mask_branch.refine.0.0.weight"].shape[0]
        cfg.mask_branch.num_convs = len(tower) - 1
        cfg.mask_branch.out_channels = sd[f"mask_branch.tower.{tower[-1]}.weight"].shape[0]
        cfg.mask_branch.semantic_loss_on = "mask_branch.seg_head.0.0.weight" in sd
        num_params = sd["controller.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"not a CondInst checkpoint: key {e.args[0]!r} is missing") from None
    layers, mask_channels, coords = _infer_mask_head(num_params, cfg.mask_branch.out_channels)
    cfg.mask_head.num_layers, cfg.mask_head.channels, cfg.mask_head.coords = layers, mask_channels, coords
    if cfg.fcos.num_classes == len(COCO_CATEGORY_IDS):
        cfg.category_ids, cfg.class_names = COCO_CATEGORY_IDS, COCO_CLASS_NAMES
    return cfg.validate()


def _infer_mask_head(num_params: int, c_mask: int) -> tuple[int, int, str]:
    """(num_layers, channels, coords) whose parameter count is num_params, preferring the default 3x8."""
    candidates = [(3, 8, "relative")] + [(n, c, "relative") for n in range(1, 7) for c in range(1, 65)] + \
                 [(n, c, "none") for n in range(1, 7) for c in range(1, 65)]
    for n, c, coords in candidates:
        w, b = param_layout(c_mask + (0 if coords == "none" else 2), c, n)
        if sum(w) + sum(b) == num_params:
            return n, c, coords
    raise CheckpointError(f"cannot find a dynamic mask head with {num_params} generated parameters")


# ---- loading into a model -------------------------------------------------------------------

def mismatch_summary(mismatched: list[str], missing: list[str], unexpected: list[str], limit: int = 5,
                     missing_what: str = "key(s) missing", unexpected_what: str = "unexpected key(s)") -> str:
    """One line naming the first shape mismatches, missing and unexpected keys ('' when all fit)."""
    parts = []
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es), first: " + "; ".join(mismatched[:limit]))
    if missing:
        parts.append(f"{len(missing)} {missing_what}, first: {', '.join(missing[:limit])}")
    if unexpected:
        parts.append(f"{len(unexpected)} {unexpected_what}, first: {', '.join(unexpected[:limit])}")
    return " | ".join(parts)


def load_state_dict_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load every tensor or fail, naming the first missing / unexpected / mis-shaped keys."""
    own = model.state_dict()
    sd = {k: v for k, v in sd.items()
          if k in own or (k not in IGNORED_KEYS and not k.endswith("num_batches_tracked"))}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and sd[k].shape != own[k].shape]
    summary = mismatch_summary(mismatched, missing, unexpected, missing_what=f"key(s) missing from the {source}")
    if summary:
        raise CheckpointError(f"the {source} does not fit the model architecture: {summary}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(sd[k].to(v.dtype))


def config_from_checkpoint(extras: dict[str, Any], sd: dict[str, torch.Tensor], kind: str) -> CondInstConfig:
    """The architecture of a split checkpoint (see `split_checkpoint`): the config ours store, or
    the one recognised from an official checkpoint's keys and shapes."""
    if kind == FORMAT_NAME:
        try:
            return config_from_dict(extras["config"]).validate()
        except (KeyError, ConfigError, TypeError) as e:
            raise CheckpointError(f"the checkpoint's stored config is invalid: {e}") from None
    if kind == SIPMASK_KIND:
        return infer_sipmask_config(sd)
    return infer_config(sd, kind)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, cfg: CondInstConfig, **extra: Any) -> Path:
    """Atomically write our checkpoint format (weights, config incl. class names, extra entries)."""
    if getattr(model, "inference_optimized", False):
        raise CheckpointError("this model was optimised for inference (FrozenBN folded into the convs) and "
                              "cannot be saved; save the model it was loaded from")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": model.state_dict(),
             "config": cfg.to_dict(), **extra}
    atomic_torch_save(state, path)
    return path
