"""State-dict layouts (key -> shape) of the official CondInst and SipMask checkpoints, written from the official
module trees, not from our builders; tests/condinst/test_official_presets.py fills them with the numbers of
each official config file and checks them against the key dumps of real official models.

  AD = aim-uofa/AdelaiDet (adet/modeling/...), D2 = facebookresearch/detectron2 (detectron2/modeling/...),
  MM = open-mmlab/mmdetection 3.x (mmdet/models/dense_heads/condinst_head.py, fcos_head.py),
  SM = JialeCao001/SipMask, SipMask-mmdetection/mmdet (SMH = models/anchor_heads/sipmask_head.py).
"""
from __future__ import annotations

# D2 modeling/backbone/resnet.py:571-572 `num_blocks_per_stage`; SM models/backbones/resnet.py:354-355 `arch_settings`
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _conv(out: dict, key: str, cout: int, cin: int, k: int, bias: bool = True) -> None:
    out[key + ".weight"] = (cout, cin, k, k)
    if bias:
        out[key + ".bias"] = (cout,)


def _norm(out: dict, key: str, c: int, stats: bool = True, tracked: bool = True) -> None:
    """GroupNorm: stats=False; D2 FrozenBatchNorm2d: tracked=False (layers/batch_norm.py:43 registers None)."""
    out.update({f"{key}.weight": (c,), f"{key}.bias": (c,)})
    if stats:
        out.update({f"{key}.running_mean": (c,), f"{key}.running_var": (c,)})
    if tracked:
        out[f"{key}.num_batches_tracked"] = ()


def d2_resnet(prefix: str, depth: int, stem: int, res2: int, width: int) -> dict:
    """D2 `build_resnet_backbone`: stem.conv1 + res2..res5 bottlenecks, FrozenBN, shortcut on each first block."""
    out, cin = {}, stem
    _conv(out, prefix + "stem.conv1", stem, 3, 7, bias=False)
    _norm(out, prefix + "stem.conv1.norm", stem, tracked=False)
    for s, blocks in enumerate(BLOCKS[depth]):
        mid, cout = width * 2 ** s, res2 * 2 ** s
        for b in range(blocks):
            p = f"{prefix}res{s + 2}.{b}."
            if b == 0:
                _conv(out, p + "shortcut", cout, cin, 1, bias=False)
                _norm(out, p + "shortcut.norm", cout, tracked=False)
            for i, (o, c, k) in enumerate(((mid, cin, 1), (mid, mid, 3), (cout, mid, 1)), 1):
                _conv(out, f"{p}conv{i}", o, c, k, bias=False)
                _norm(out, f"{p}conv{i}.norm", o, tracked=False)
            cin = cout
    return out


def mmdet_resnet(depth: int, dcn_stages: tuple[int, ...] = ()) -> dict:
    """mmdetection `ResNet` (conv1/bn1, layerK.i.convJ/bnJ/downsample, BN with its counter). A DCN conv2 is SM
    `DeformConvPack` (mmdet/ops/dcn/deform_conv.py:279): a biased 3x3 `conv_offset` of 18 channels inside it."""
    out, cin = {}, 64
    _conv(out, "backbone.conv1", 64, 3, 7, bias=False)
    _norm(out, "backbone.bn1", 64)
    for s, blocks in enumerate(BLOCKS[depth]):
        mid, cout = 64 * 2 ** s, 256 * 2 ** s
        for b in range(blocks):
            p = f"backbone.layer{s + 1}.{b}."
            for i, (o, c, k) in enumerate(((mid, cin, 1), (mid, mid, 3), (cout, mid, 1)), 1):
                _conv(out, f"{p}conv{i}", o, c, k, bias=False)
                _norm(out, f"{p}bn{i}", o)
            if s + 2 in dcn_stages:
                _conv(out, p + "conv2.conv_offset", 18, mid, 3)
            if b == 0:
                _conv(out, p + "downsample.0", cout, cin, 1, bias=False)
                _norm(out, p + "downsample.1", cout)
            cin = cout
    return out


def mmdet_fpn(channels: int) -> dict:
    """mmdetection FPN with start_level 1 and 5 outputs: 3 laterals, 3 outputs + 2 extra 3x3 convs."""
    out = {}
    for i, cin in enumerate((512, 1024, 2048)):
        _conv(out, f"neck.lateral_convs.{i}.conv", channels, cin, 1)
    for i in range(5):
        _conv(out, f"neck.fpn_convs.{i}.conv", channels, channels, 3)
    return out


def _bifpn(out: dict, c: int, res2: int, repeats: int) -> None:
    """AD modeling/backbone/bifpn.py: res6 = 1x1 reduction (no bias) + SyncBN, res7 a bare max pool; each
    SingleBiFPN node fuses its inputs (1x1 lateral with bias + SyncBN where the channels differ) with
    `weights_f*` and a 3x3 `outputs_f*` conv (no bias) + SyncBN."""
    _conv(out, "backbone.bottom_up.res6.reduction", c, res2 * 8, 1, bias=False)
    _norm(out, "backbone.bottom_up.res6.reduction.norm", c)
    nodes = ((3, (3, 4)), (2, (2, 5)), (1, (1, 6)), (0, (0, 7)), (1, (1, 7, 8)), (2, (2, 6, 9)),
             (3, (3, 5, 10)), (4, (4, 11)))  # the 5-level node list of SingleBiFPN.__init__
    for r in range(repeats):
        info = [res2 * 2, res2 * 4, res2 * 8, c, c] if r == 0 else [c] * 5
        p = f"backbone.repeated_bifpn.{r}."
        for level, inputs in nodes:
            tag = f"f{level}_{'_'.join(map(str, inputs))}"
            for i in inputs:
                if info[i] != c:
                    _conv(out, f"{p}lateral_{i}_f{level}", c, info[i], 1)
                    _norm(out, f"{p}lateral_{i}_f{level}.norm", c)
            out[f"{p}weights_{tag}"] = (len(inputs),)
            _conv(out, f"{p}outputs_{tag}", c, c, 3, bias=False)
            _norm(out, f"{p}outputs_{tag}.norm", c)
            info.append(c)


def adelaidet_keys(*, depth: int, bifpn: bool, sem: bool, channels: int, repeats: int, num_classes: int,
                   towers: dict[str, int], mask_channels: int, mask_out: int, mask_convs: int, num_params: int,
                   stem: int = 64, res2: int = 256, width: int = 64) -> dict:
    """An AdelaiDet CondInst model's state dict: backbone (FPN or BiFPN), FCOS head (AD modeling/fcos/fcos.py:
    [conv with bias, GN(32), ReLU] per tower conv), mask branch (AD modeling/condinst/mask_branch.py: conv without
    bias + BN), the dynamic mask head's two buffers (AD dynamic_mask_head.py:104, :133) and the controller."""
    out, c = {}, channels
    if bifpn:
        out.update(d2_resnet("backbone.bottom_up.backbone.", depth, stem, res2, width))
        _bifpn(out, c, res2, repeats)
    else:  # AD modeling/backbone/fpn.py: FPN on res3-res5 + LastLevelP6P7 on P5
        out.update(d2_resnet("backbone.bottom_up.", depth, stem, res2, width))
        for level, cin in ((3, res2 * 2), (4, res2 * 4), (5, res2 * 8)):
            _conv(out, f"backbone.fpn_lateral{level}", c, cin, 1)
            _conv(out, f"backbone.fpn_output{level}", c, c, 3)
        _conv(out, "backbone.top_block.p6", c, c, 3)
        _conv(out, "backbone.top_block.p7", c, c, 3)
    head = "proposal_generator.fcos_head."
    for tower, n in towers.items():
        for i in range(n):
            _conv(out, f"{head}{tower}_tower.{3 * i}", c, c, 3)
            _norm(out, f"{head}{tower}_tower.{3 * i + 1}", c, stats=False, tracked=False)
    _conv(out, head + "cls_logits", num_classes, c, 3)
    _conv(out, head + "bbox_pred", 4, c, 3)
    _conv(out, head + "ctrness", 1, c, 3)
    out.update({f"{head}scales.{i}.scale": (1,) for i in range(5)})
    for i in range(3):
        _conv(out, f"mask_branch.refine.{i}.0", mask_channels, c, 3, bias=False)
        _norm(out, f"mask_branch.refine.{i}.1", mask_channels)
    for i in range(mask_convs):
        _conv(out, f"mask_branch.tower.{i}.0", mask_channels, mask_channels, 3, bias=False)
        _norm(out, f"mask_branch.tower.{i}.1", mask_channels)
    _conv(out, f"mask_branch.tower.{mask_convs}", mask_out, mask_channels, 1)
    if sem:
        for i, cin in enumerate((c, mask_channels)):
            _conv(out, f"mask_branch.seg_head.{i}.0", mask_channels, cin, 3, bias=False)
            _norm(out, f"mask_branch.seg_head.{i}.1", mask_channels)
        _conv(out, "mask_branch.logits", num_classes, mask_channels, 1)
    out["mask_head.sizes_of_interest"] = (5,)
    out["mask_head._iter"] = (1,)
    _conv(out, "controller", num_params, c, 3)  # AD modeling/condinst/condinst.py:103
    return out


def dynamic_params(mask_out: int, rel_coords: bool, channels: int, layers: int) -> int:
    """AD dynamic_mask_head.py:114-131: weights (C_mask [+2]) x ch, ch x ch per middle layer, ch x 1; biases."""
    cin = mask_out + 2 * rel_coords
    return cin * channels + channels * channels * (layers - 2) + channels + channels * (layers - 1) + 1


def mmdet_condinst_keys(*, depth: int, channels: int, stacked_convs: int, num_classes: int, num_params: int,
                        mask_channels: int, mask_out: int, mask_convs: int) -> dict:
    """MM CondInstBboxHead (FCOSHead towers: ConvModule conv with bias + gn; conv_cls/reg/centerness, 0-dim
    mmcv Scales, controller) and CondInstMaskHead's MaskFeatModule (ConvModule conv without bias + bn)."""
    out, c = {**mmdet_resnet(depth), **mmdet_fpn(channels)}, channels
    for tower in ("cls_convs", "reg_convs"):
        for i in range(stacked_convs):
            _conv(out, f"bbox_head.{tower}.{i}.conv", c, c, 3)
            _norm(out, f"bbox_head.{tower}.{i}.gn", c, stats=False, tracked=False)
    _conv(out, "bbox_head.conv_cls", num_classes, c, 3)
    _conv(out, "bbox_head.conv_reg", 4, c, 3)
    _conv(out, "bbox_head.conv_centerness", 1, c, 3)
    out.update({f"bbox_head.scales.{i}.scale": () for i in range(5)})
    _conv(out, "bbox_head.controller", num_params, c, 3)
    p = "mask_head.mask_feature_head."
    for i in range(3):  # convs_all_levels[i] = Sequential(conv{i}=ConvModule)
        _conv(out, f"{p}convs_all_levels.{i}.conv{i}.conv", mask_channels, c, 3, bias=False)
        _norm(out, f"{p}convs_all_levels.{i}.conv{i}.bn", mask_channels)
    for i in range(mask_convs):
        _conv(out, f"{p}conv_branch.{i}.conv", mask_channels, mask_channels, 3, bias=False)
        _norm(out, f"{p}conv_branch.{i}.bn", mask_channels)
    _conv(out, p + "conv_pred", mask_out, mask_channels, 1)
    return out


def sipmask_keys(*, depth: int, stacked_convs: int, gn: bool, plus: bool, num_classes: int, channels: int = 256,
                 num_bases: int = 32) -> dict:
    """SMH SipMaskHead._init_layers (:159-224) on the mmdetection ResNet (DCN in res3-res5 for SipMask++) + FPN."""
    out, c = {**mmdet_resnet(depth, (3, 4, 5) if plus else ()), **mmdet_fpn(channels)}, channels
    for tower, n in (("cls_convs", stacked_convs - 1), ("reg_convs", stacked_convs)):  # SMH:162, :174
        for i in range(n):
            _conv(out, f"bbox_head.{tower}.{i}.conv", c, c, 3, bias=not gn)  # SMH:173 bias=norm_cfg is None
            if gn:
                _norm(out, f"bbox_head.{tower}.{i}.gn", c, stats=False, tracked=False)
    _conv(out, "bbox_head.fcos_cls", num_classes, c, 3)  # SMH:186-189
    _conv(out, "bbox_head.fcos_reg", 4, c, 3)
    _conv(out, "bbox_head.fcos_centerness", 1, c, 3)
    out.update({f"bbox_head.scales.{i}.scale": () for i in range(5)})  # SMH:190
    _conv(out, "bbox_head.feat_align.conv_offset", 72, 4, 1, bias=False)  # SMH:30-40: its GN always exists
    _conv(out, "bbox_head.feat_align.conv_adaption", c, c, 3, bias=False)
    _norm(out, "bbox_head.feat_align.norm", c, stats=False, tracked=False)
    _conv(out, "bbox_head.sip_cof", num_bases * 4, c, 3)  # SMH:195
    _conv(out, "bbox_head.sip_mask_lat", num_bases, 512, 3)  # SMH:197
    _conv(out, "bbox_head.sip_mask_lat0", 512, 3 * c, 1)  # SMH:198 (768 = P3-P5 box towers)
    if plus:  # SMH:200-216
        widths = (1, 16, 16, 16, 32, 64, 128)
        for i in range(6):
            _conv(out, f"bbox_head.convs_scoring.{i}.conv", widths[i + 1], widths[i], 3)
        _conv(out, "bbox_head.mask_scoring", num_classes, 128, 1)
    return out
