"""SipMask++'s mask re-scoring loss alone: forward + backward of `training.sipmask_losses.rescoring_loss`.

Random positives (boxes 20-150 px on the stride-2 mask map, windows grouped as the mask loss groups them,
random mask values) on the mask map of one padded image. Two ways to run the six 3x3/2 convs:

    crops      ours: a crop around each window, aligned to the last conv's 64-px stride, + one all-zero map
    whole map  the official code's way: every positive's mask pasted into the whole zero map

    python -m bench.sipmask_rescoring                                    # 800x1333 and 544x544, 25/100 positives
    python -m bench.sipmask_rescoring --device cpu --threads 1 --iters 3 --positives 100
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/sipmask_rescoring.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import (add_common_args, environment, format_table, parse_list, parse_size, peak_memory_mb,
                          release_memory, reset_peak_memory, settings_of, setup, time_fn, write_json)
from condinst.sipmask.head import MaskRescoring
from training.sipmask_losses import PositiveMasks, box_windows, rescoring_loss, window_groups

METHODS = ("crops", "whole map")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "sipmask_rescoring", iters=5, warmup=1)
    parser.add_argument("--image-sizes", type=lambda s: parse_list(s, parse_size), default=[(800, 1333), (544, 544)],
                        help="network inputs HxW before padding to 32 (default 800x1333,544x544)")
    parser.add_argument("--positives", type=lambda s: parse_list(s, int), default=[25, 100],
                        help="positives of the mask loss (default 25,100)")
    parser.add_argument("--classes", type=int, default=80, help="classes of the re-scoring conv (default 80)")
    return parser.parse_args(argv)


def random_positives(height: int, width: int, count: int, classes: int, device: torch.device,
                     generator: torch.Generator) -> PositiveMasks:
    """`count` random boxes on a (height, width) mask map, as the mask loss hands them over."""
    xy = torch.rand((count, 2), generator=generator) * torch.tensor([max(width - 40.0, 1), max(height - 40.0, 1)])
    boxes = torch.cat([xy, xy + 20 + torch.rand((count, 2), generator=generator) * 130], dim=1)
    groups = []
    for part in window_groups(boxes, height, width, num_bases=32):
        rows, cols, _ = box_windows(boxes[part], height, width)
        offsets = rows[:, :, None] * width + cols[:, None, :]
        pred = torch.rand(offsets.shape, generator=generator)
        overlap = 0.5 * (pred > 0.4).sum(dim=(1, 2)).float()
        groups.append(tuple(t.to(device) for t in (part, pred, offsets, overlap)))
    labels = torch.randint(0, classes, (count,), generator=generator)
    return PositiveMasks(groups, labels.to(device), torch.full((count,), 500.0, device=device))


def whole_map_loss(rescoring: MaskRescoring, masks: PositiveMasks, height: int, width: int) -> torch.Tensor:
    """The convs on every positive's whole zero-padded map (the official computation; targets left out)."""
    total = 0
    for part, pred, offsets, _ in masks.groups:
        n = len(part)
        whole = pred.new_zeros((n, height * width)).scatter_(1, offsets.reshape(n, -1), pred.reshape(n, -1))
        total = total + rescoring(whole.view(n, 1, height, width)).gather(1, masks.labels[part, None]).sum()
    return total


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    rescoring = MaskRescoring(args.classes).to(device)
    env = environment(device)
    print(f"SipMask++ re-scoring loss on {env['device_name']} ({device})", flush=True)
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    for size in args.image_sizes:
        height, width = ((s + 31) // 32 * 32 // 2 for s in size)
        for count in args.positives:
            masks = random_positives(height, width, count, args.classes, device, generator)
            for method in METHODS:
                def step():
                    rescoring.zero_grad()
                    loss = (rescoring_loss(rescoring, masks, (height, width)) if method == "crops"
                            else whole_map_loss(rescoring, masks, height, width))
                    loss.backward()

                reset_peak_memory(device)
                timing = time_fn(step, device, args.iters, args.warmup)
                timing.update(peak_memory_mb(device))
                release_memory(device)
                row = {"image_size": f"{size[0]}x{size[1]}", "mask_map": [height, width], "positives": count,
                       "method": method, **timing}
                rows.append(row)
                print(f"  {row['image_size']} {count:4d} positives {method:9s}: {row['median_ms']:.1f} ms", flush=True)
    payload = {"benchmark": "sipmask_rescoring", "environment": env, "settings": settings_of(args), "results": rows}
    print()
    print(format_table(rows, [("input", "image_size", "{}"), ("positives", "positives", "{}"),
                              ("method", "method", "{}"), ("median ms", "median_ms", "{:.1f}"),
                              ("p10", "p10_ms", "{:.1f}"), ("p90", "p90_ms", "{:.1f}"),
                              ("peak MB", "peak_allocated_mb", "{:.0f}")]))
    print(f"\nwrote {write_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
