"""The dynamic mask head alone: N instances' generated filters run on one image's mask features.

At an 800x1333 input (padded to 800x1344) the mask branch gives 8 x 100 x 168 features at stride 8;
the head concatenates the relative coordinates (10 input channels), runs its three 1x1 layers
(8, 8, 1 channels, 169 generated parameters per instance) as batched matrix products, and upsamples
the logits to stride 4 (200 x 336): `DynamicMaskHead.mask_logits`, as `CondInst.inference` calls it.

    python -m bench.mask_head                                   # 10, 50, 100, 500 instances; fp32 + bf16 on CUDA
    python -m bench.mask_head --device cpu --iters 10 --dtypes fp32 --threads 2

bf16: mask features and filters in bfloat16 under autocast, as in the fast inference mode.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/mask_head.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import (add_common_args, autocast, environment, format_table, parse_list, parse_size,
                          peak_memory_mb, release_memory, reset_peak_memory, settings_of, setup, time_fn, write_json)
from condinst.dynamic_mask_head import DynamicMaskHead
from condinst.arch import get_preset

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "mask_head", iters=100, warmup=20)
    parser.add_argument("--instances", type=lambda s: parse_list(s, int), default=[10, 50, 100, 500],
                        help="instance counts (default 10,50,100,500)")
    parser.add_argument("--image-size", type=parse_size, default=(800, 1333),
                        help="network input HxW before padding to 32 (default 800x1333)")
    parser.add_argument("--dtypes", type=lambda s: parse_list(s), default=None,
                        help="fp32, bf16, fp16 (default fp32,bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--preset", default="MS_R_50_1x", help="config of the head (default %(default)s)")
    args = parser.parse_args(argv)
    for name in args.dtypes or ():
        if name not in DTYPES:
            parser.error(f"--dtypes: unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    return args


def make_inputs(head: DynamicMaskHead, num_instances: int, image_size: tuple[int, int], mask_channels: int,
                device: torch.device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random mask features of one padded image and `num_instances` random instances on it."""
    h = (image_size[0] + 31) // 32 * 32
    w = (image_size[1] + 31) // 32 * 32
    mask_feats = torch.randn((1, mask_channels, h // 8, w // 8), generator=generator)
    locations = torch.rand((num_instances, 2), generator=generator) * torch.tensor([image_size[1], image_size[0]])
    fpn_levels = torch.randint(0, 5, (num_instances,), generator=generator)
    params = torch.randn((num_instances, head.num_gen_params), generator=generator) * 0.1
    inputs = dict(mask_feats=mask_feats, locations=locations, fpn_levels=fpn_levels,
                  im_inds=torch.zeros(num_instances, dtype=torch.long), params=params)
    return {k: v.to(device) for k, v in inputs.items()}


def run_head(head: DynamicMaskHead, inputs: dict[str, torch.Tensor], device: torch.device,
             dtype: torch.dtype | None, upsample: bool = True) -> torch.Tensor:
    """(N, 1, 2H, 2W) mask logits; (N, 1, H, W) at the features' stride when not `upsample`."""
    with torch.no_grad(), autocast(device, dtype):
        return head.mask_logits(inputs["mask_feats"], 8, inputs["locations"], inputs["fpn_levels"],
                                inputs["im_inds"], inputs["params"], upsample=upsample)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    dtypes = args.dtypes or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    cfg = get_preset(args.preset)
    head = DynamicMaskHead(cfg.mask_head, cfg.mask_branch.out_channels, cfg.fcos.sizes_of_interest).to(device)
    env = environment(device)
    print(f"dynamic mask head on {env['device_name']} ({device}), input {args.image_size[0]}x{args.image_size[1]}",
          flush=True)
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    for n in args.instances:
        base = make_inputs(head, n, args.image_size, cfg.mask_branch.out_channels, device, generator)
        for name in dtypes:
            dtype = DTYPES[name]
            inputs = dict(base)
            if dtype is not None:  # the fast mode's mask branch and controller already output this dtype
                inputs["mask_feats"] = base["mask_feats"].to(dtype)
                inputs["params"] = base["params"].to(dtype)
            out = run_head(head, inputs, device, dtype)
            # The per-instance GEMMs run in `dtype`; autocast runs the upsampling's replicate pads in float32,
            # so the upsampled output is float32 whatever the head computed in.
            head_dtype = run_head(head, inputs, device, dtype, upsample=False).dtype
            reset_peak_memory(device)
            timing = time_fn(lambda: run_head(head, inputs, device, dtype), device, args.iters, args.warmup)
            timing.update(peak_memory_mb(device))
            release_memory(device)
            row = {"instances": n, "dtype": name, "mask_feats_shape": list(base["mask_feats"].shape),
                   "output_shape": list(out.shape), "output_dtype": str(out.dtype).replace("torch.", ""),
                   "head_dtype": str(head_dtype).replace("torch.", ""),
                   "us_per_instance": timing["median_ms"] * 1000.0 / n, **timing}
            rows.append(row)
            print(f"  {n:4d} instances {name}: {row['median_ms']:.3f} ms  output {tuple(out.shape)}", flush=True)
    payload = {"benchmark": "mask_head", "environment": env, "settings": settings_of(args), "results": rows}
    print()
    print(format_table(rows, [("instances", "instances", "{}"), ("dtype", "dtype", "{}"),
                              ("median ms", "median_ms", "{:.3f}"), ("p10", "p10_ms", "{:.3f}"),
                              ("p90", "p90_ms", "{:.3f}"), ("IQR", "iqr_ms", "{:.3f}"),
                              ("us/instance", "us_per_instance", "{:.2f}"),
                              ("peak MB", "peak_allocated_mb", "{:.0f}")]))
    print(f"\nwrote {write_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
