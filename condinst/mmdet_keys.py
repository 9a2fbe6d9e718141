"""mmdetection's parameter names onto ours (AdelaiDet's, which our module tree follows).

CondInst's official mmdetection v3 checkpoint is renamed whole (`convert_mmdet_state_dict`); SipMask's
(mmdetection v1) uses the same rules for its backbone and neck (`condinst.sipmask.checkpoint`).
"""
from __future__ import annotations

import re

import torch

_MMDET_RULES = [
    (r"^backbone\.conv1\.", "backbone.bottom_up.stem.conv1."),
    (r"^backbone\.bn1\.", "backbone.bottom_up.stem.conv1.norm."),
    (r"^neck\.lateral_convs\.(\d)\.conv\.", lambda m: f"backbone.fpn_lateral{int(m[1]) + 3}."),
    (r"^neck\.fpn_convs\.([012])\.conv\.", lambda m: f"backbone.fpn_output{int(m[1]) + 3}."),
    (r"^neck\.fpn_convs\.3\.conv\.", "backbone.top_block.p6."),
    (r"^neck\.fpn_convs\.4\.conv\.", "backbone.top_block.p7."),
    (r"^bbox_head\.cls_convs\.(\d+)\.conv\.", lambda m: f"proposal_generator.fcos_head.cls_tower.{3 * int(m[1])}."),
    (r"^bbox_head\.cls_convs\.(\d+)\.gn\.", lambda m: f"proposal_generator.fcos_head.cls_tower.{3 * int(m[1]) + 1}."),
    (r"^bbox_head\.reg_convs\.(\d+)\.conv\.", lambda m: f"proposal_generator.fcos_head.bbox_tower.{3 * int(m[1])}."),
    (r"^bbox_head\.reg_convs\.(\d+)\.gn\.", lambda m: f"proposal_generator.fcos_head.bbox_tower.{3 * int(m[1]) + 1}."),
    (r"^bbox_head\.conv_cls\.", "proposal_generator.fcos_head.cls_logits."),
    (r"^bbox_head\.conv_reg\.", "proposal_generator.fcos_head.bbox_pred."),
    (r"^bbox_head\.conv_centerness\.", "proposal_generator.fcos_head.ctrness."),
    (r"^bbox_head\.scales\.(\d+)\.scale$", lambda m: f"proposal_generator.fcos_head.scales.{m[1]}.scale"),
    (r"^bbox_head\.controller\.", "controller."),
    (r"^mask_head\.mask_feature_head\.convs_all_levels\.(\d)\.conv\d\.conv\.", lambda m: f"mask_branch.refine.{m[1]}.0."),
    (r"^mask_head\.mask_feature_head\.convs_all_levels\.(\d)\.conv\d\.bn\.", lambda m: f"mask_branch.refine.{m[1]}.1."),
    (r"^mask_head\.mask_feature_head\.conv_branch\.(\d+)\.conv\.", lambda m: f"mask_branch.tower.{m[1]}.0."),
    (r"^mask_head\.mask_feature_head\.conv_branch\.(\d+)\.bn\.", lambda m: f"mask_branch.tower.{m[1]}.1."),
]


def _mmdet_resnet_key(key: str) -> str | None:
    """backbone.layer{k}.{i}.{conv|bn}{j} / downsample.{0|1} -> detectron2 names."""
    m = re.match(r"^backbone\.layer(\d)\.(\d+)\.(.*)$", key)
    if not m:
        return None
    stage, block, rest = int(m[1]) + 1, m[2], m[3]
    prefix = f"backbone.bottom_up.res{stage}.{block}."
    rest = re.sub(r"^conv2_offset\.", "conv2.conv_offset.", rest)  # DCN stages, older key layout
    rest = re.sub(r"^conv(\d)\.", r"conv\1.", rest)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
    rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
    return prefix + rest


def convert_mmdet_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an mmdetection CondInst state dict onto our (AdelaiDet) key names.

    BN `num_batches_tracked` counters are dropped (our ResNet norms are frozen); the 0-dim FCOS
    scales become shape (1,). Unrecognised keys are kept as they are so the strict load reports them.
    """
    num_tower_convs = len({m[1] for k in sd if (m := re.match(r"^mask_head\.mask_feature_head\.conv_branch\.(\d+)\.", k))})
    out = {}
    for key, value in sd.items():
        if key.startswith("mask_head.mask_feature_head.conv_pred."):
            out[f"mask_branch.tower.{num_tower_convs}.{key.rsplit('.', 1)[1]}"] = value
            continue
        if key.endswith("num_batches_tracked") and key.startswith("backbone."):
            continue
        new = _mmdet_resnet_key(key)
        if new is None:
            for pattern, repl in _MMDET_RULES:
                if re.match(pattern, key):
                    new = re.sub(pattern, repl, key)
                    break
        if new is None:
            new = key
        if new.endswith("scales.0.scale") or re.search(r"scales\.\d+\.scale$", new):
            value = value.reshape(1)
        out[new] = value
    return out
