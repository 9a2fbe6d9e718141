"""End-to-end inference speed: CondInst vs torchvision Mask R-CNN, side by side in one run.

From RGB uint8 images already on the device to boolean masks at the original resolution, with
exactly 100 detections per image for both models (random weights, thresholds forced, counts
checked). For each image size, batch size and precision mode:

    fp32   both models in float32, contiguous tensors
    fast   both models with channels_last and autocast to bf16 on CUDA (CondInst's fast mode:
           `Predictor(..., fast=True)`); on CPU only channels_last applies

    python -m bench.inference                                  # GPU if available, batch 1 and 8
    python -m bench.inference --device cpu --iters 5 --warmup 1 --batch-sizes 1 --threads 2

`--input host` starts from numpy images in host memory instead, through the public API
(`Predictor.__call__`; its fp32 mode resizes with PIL on the host as the reference pipeline does).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/inference.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import (add_common_args, environment, format_table, parse_list, parse_size, peak_memory_mb,
                          release_memory, reset_peak_memory, settings_of, setup, time_fn, write_json)
from bench.models import (FAST_DTYPES, CondInstPipeline, MaskRCNNPipeline, add_model_args, build_condinst,
                          check_masks_at_original_size, condinst_config_from_args, count_detections,
                          describe_models, maskrcnn_from_args, random_images, to_device_chw)

MODES = ("fp32", "fast")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "inference", iters=50, warmup=10)
    parser.add_argument("--batch-sizes", type=lambda s: parse_list(s, int), default=[1, 8],
                        help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--sizes", type=lambda s: parse_list(s, parse_size), default=[(480, 640)],
                        help="original image sizes HxW, comma-separated (default 480x640, a COCO-sized photo "
                             "resized to 800x1067 by both models)")
    parser.add_argument("--modes", type=lambda s: parse_list(s), default=list(MODES),
                        help="fp32 and/or fast (default fp32,fast)")
    parser.add_argument("--fast-dtype", choices=sorted(FAST_DTYPES), default="bf16",
                        help="autocast dtype of the fast mode on CUDA (default bf16)")
    parser.add_argument("--input", choices=("device", "host"), default="device",
                        help="device: uint8 tensors already on the device (default); host: numpy images "
                             "through the public Predictor API")
    add_model_args(parser)
    args = parser.parse_args(argv)
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"--modes: unknown mode {mode!r} (choose from {', '.join(MODES)})")
    return args


def build_pipelines(args: argparse.Namespace, device: torch.device) -> dict[tuple[str, str], object]:
    """{(model, mode): pipeline}; the two modes of a model share the same random weights."""
    cfg = condinst_config_from_args(args)
    fast_dtype = FAST_DTYPES[args.fast_dtype]
    pipelines: dict[tuple[str, str], object] = {}
    for mode in args.modes:
        fast = mode == "fast"
        torch.manual_seed(args.seed)
        condinst = build_condinst(cfg, device)
        pipelines[("condinst", mode)] = CondInstPipeline(condinst, cfg, device, fast=fast, fast_dtype=fast_dtype)
        torch.manual_seed(args.seed)
        maskrcnn = maskrcnn_from_args(args, cfg)
        pipelines[("maskrcnn", mode)] = MaskRCNNPipeline(maskrcnn, device, fast=fast, fast_dtype=fast_dtype,
                                                         mask_threshold=cfg.mask_head.mask_threshold)
    return pipelines


def precision_label(pipeline, mode: str) -> str:
    if mode == "fp32":
        return "fp32"
    dtype = pipeline.autocast_dtype
    return "channels_last + " + (f"autocast {str(dtype).replace('torch.', '')}" if dtype is not None
                                 else "fp32 (no autocast on CPU)")


def measure(pipeline, inputs, expected: int, sizes, args, device: torch.device, batch_size: int) -> dict:
    """Check one call's output (count, mask size), then time the pipeline on `inputs`."""
    run = pipeline.host if args.input == "host" else pipeline
    outputs = run(inputs)
    counts = count_detections(outputs)
    check_masks_at_original_size(outputs, sizes)
    del outputs
    if any(c != expected for c in counts):
        raise RuntimeError(f"expected {expected} detections per image, got {counts}: the comparison would be unfair")
    reset_peak_memory(device)
    timing = time_fn(lambda: run(inputs), device, args.iters, args.warmup, batch_size)
    timing.update(peak_memory_mb(device))
    timing["detections_per_image"] = counts
    return timing


def run_benchmark(args: argparse.Namespace, device: torch.device, pipelines: dict) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(args.seed)
    rows, comparisons = [], []
    for size in args.sizes:
        for batch_size in args.batch_sizes:
            arrays = random_images(size, batch_size, rng)
            inputs = arrays if args.input == "host" else to_device_chw(arrays, device)
            sizes = [size] * batch_size
            for mode in args.modes:
                by_model = {}
                for model in ("condinst", "maskrcnn"):
                    pipeline = pipelines[(model, mode)]
                    timing = measure(pipeline, inputs, args.detections, sizes, args, device, batch_size)
                    release_memory(device)
                    row = {"model": model, "mode": mode, "precision": precision_label(pipeline, mode),
                           "image_size": list(size), "batch_size": batch_size, **timing}
                    rows.append(row)
                    by_model[model] = row
                    print(f"  {model:9s} {mode:5s} batch {batch_size} {size[0]}x{size[1]}: "
                          f"{row['ms_per_image']:.2f} ms/image  detections {row['detections_per_image']}", flush=True)
                ours, theirs = by_model["condinst"], by_model["maskrcnn"]
                comparisons.append({
                    "mode": mode, "batch_size": batch_size, "image_size": list(size),
                    "condinst_ms_per_image": ours["ms_per_image"], "maskrcnn_ms_per_image": theirs["ms_per_image"],
                    "ratio_ours_over_torchvision": ours["ms_per_image"] / theirs["ms_per_image"],
                    "speedup_vs_torchvision": theirs["ms_per_image"] / ours["ms_per_image"],
                })
    return rows, comparisons


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    env = environment(device)
    print(f"inference benchmark on {env['device_name']} ({device}), torch {env['torch']}, "
          f"{env['torch_threads']} CPU threads, input on {args.input}", flush=True)
    pipelines = build_pipelines(args, device)
    mode = args.modes[0]
    models = describe_models(pipelines[("condinst", mode)].cfg, pipelines[("condinst", mode)].model,
                             pipelines[("maskrcnn", mode)].model)
    rows, comparisons = run_benchmark(args, device, pipelines)
    payload = {"benchmark": "inference", "environment": env, "settings": settings_of(args), "models": models,
               "results": rows, "comparisons": comparisons}
    print()
    print(format_table(rows, [("model", "model", "{}"), ("mode", "mode", "{}"), ("batch", "batch_size", "{}"),
                              ("ms/image", "ms_per_image", "{:.2f}"), ("median ms", "median_ms", "{:.2f}"),
                              ("p10", "p10_ms", "{:.2f}"), ("p90", "p90_ms", "{:.2f}"), ("IQR", "iqr_ms", "{:.2f}"),
                              ("images/s", "images_per_s", "{:.1f}"), ("peak MB", "peak_allocated_mb", "{:.0f}")]))
    print()
    print(format_table(comparisons, [("mode", "mode", "{}"), ("batch", "batch_size", "{}"),
                                     ("CondInst ms/img", "condinst_ms_per_image", "{:.2f}"),
                                     ("Mask R-CNN ms/img", "maskrcnn_ms_per_image", "{:.2f}"),
                                     ("ours/torchvision", "ratio_ours_over_torchvision", "{:.3f}")]))
    print(f"\nwrote {write_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
