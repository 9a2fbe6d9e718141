"""Helpers shared by the tests (importable: `tests/` is on pytest's pythonpath)."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CONDINST_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "reference" / "parity"
DATASETS = SHARED / "datasets"


def tiny_config(num_classes: int = 80, **mask_head):
    """The parity fixtures' TINY architecture (R-50 depth, narrow channels)."""
    from condinst.config import BackboneConfig, CondInstConfig, MaskBranchConfig, NeckConfig

    cfg = CondInstConfig(name="tiny", backbone=BackboneConfig(stem_out_channels=16, res2_out_channels=64,
                                                              width_per_group=16),
                         neck=NeckConfig(out_channels=32), mask_branch=MaskBranchConfig(channels=16))
    cfg.fcos.num_classes = num_classes
    cfg.input.min_size_test = 320
    for k, v in mask_head.items():
        setattr(cfg.mask_head, k, v)
    return cfg


def randomize_(model, seed: int = 0):
    """Deterministic non-trivial weights (like the parity recipe) so detections and masks exist."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            n = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.dim() == 4:
                gain = 1 / 64 if "stem.conv1" in name else (3.0 if "cls_logits" in name else 1.0)
                t.copy_(n * gain / (t[0].numel() ** 0.5))
            elif name.endswith("cls_logits.bias"):
                t.copy_(-8 + 0.1 * n)
            elif name.endswith("bbox_pred.bias"):
                t.copy_(2 + 0.1 * n)
            elif name.endswith("conv3.norm.weight"):
                t.copy_(0.5 + 0.1 * n)
            elif name.endswith(".weight") or name.endswith(".scale"):
                t.copy_(1 + 0.1 * n)
            else:
                t.copy_(0.1 * n)
    return model


def official_recipe_state_dict(keys: list[dict]) -> dict:
    """Rebuild the parity weights from their key list with the documented randomisation recipe
    (shared/reference/parity/README.md): one generator per key seeded with crc32(key)."""
    import zlib

    import torch

    shapes = {k["key"]: k["shape"] for k in keys}
    sd = {}
    for entry in keys:
        key, shape = entry["key"], entry["shape"]
        if entry["dtype"] != "float32" or key in ("mask_head.sizes_of_interest", "mask_head._iter"):
            sd[key] = (torch.tensor([64, 128, 256, 512, 1024]) if key.endswith("sizes_of_interest")
                       else torch.zeros(shape, dtype=getattr(torch, entry["dtype"])))
            continue
        g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
        prefix, name = key.rsplit(".", 1)
        is_conv = len(shapes.get(prefix + ".weight", [])) == 4
        if name == "running_var":
            value = 0.5 + torch.rand(shape, generator=g)
        else:
            n = torch.randn(shape, generator=g)
            if len(shape) == 4:
                gain = 1 / 64 if key.endswith("bottom_up.stem.conv1.weight") or key.endswith(
                    "bottom_up.backbone.stem.conv1.weight") else 3.0 if key.endswith("fcos_head.cls_logits.weight") else 1.0
                value = n * gain / (shape[1] * shape[2] * shape[3]) ** 0.5
            elif name == "bias" and is_conv:
                offset = -8.0 if key.endswith(("cls_logits.bias", "mask_branch.logits.bias")) else \
                    2.0 if key.endswith("bbox_pred.bias") else 1.0 if key.endswith("ctrness.bias") else 0.0
                value = offset + 0.1 * n
            elif name == "weight":
                value = (0.5 if key.endswith("conv3.norm.weight") else 1.0) + 0.1 * n
            elif name == "scale" or ".weights_f" in key or name.startswith("weights_f"):
                value = 1.0 + 0.1 * n
            else:  # norm bias, running_mean
                value = 0.1 * n
        sd[key] = value.float()
    return sd


def tiny_sipmask(preset: str = "sipmask_r50_caffe_fpn_gn_1x", seed: int = 0, min_size: int = 128,
                 box_cells: float = 1.5):
    """A narrow SipMask of `preset` (3 classes) with deterministic weights (`randomize_`) that detects
    everywhere (class logits 0, boxes about 2 x `box_cells` cells wide): (model in eval mode, config)."""
    import torch

    from condinst.config import BackboneConfig, NeckConfig, get_preset
    from condinst.sipmask.model import SipMask

    cfg = get_preset(preset)
    cfg.backbone = BackboneConfig(stem_out_channels=8, res2_out_channels=32, width_per_group=8, freeze_at=2,
                                  dcn_stages=cfg.backbone.dcn_stages)
    cfg.neck = NeckConfig(out_channels=32)
    cfg.fcos.num_classes, cfg.class_names, cfg.category_ids = 3, ("date", "fig", "hazelnut"), (1, 2, 3)
    cfg.input.min_size_test, cfg.input.max_size_test = min_size, 2 * min_size
    model = randomize_(SipMask(cfg.validate()), seed)
    with torch.no_grad():
        model.bbox_head.fcos_cls.bias.fill_(0.0)
        model.bbox_head.fcos_reg.bias.fill_(box_cells)
    return model.eval(), cfg
