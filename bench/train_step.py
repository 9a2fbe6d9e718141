"""One training step (forward + losses + backward + optimizer step): CondInst vs torchvision Mask R-CNN (and SipMask).

Both models train on the same synthetic batch at the recipe's resolution (short side 800, long side
<= 1333; 800x1067 for a 4:3 photo), with a few random elliptical instances (box + mask) per image,
batch 8 by default. Reported: ms per step, images/s and peak CUDA memory.

    CondInst     `training.losses.compute_losses` on a `TrainBatch` built with `training.transforms.collate`,
                 SGD with the recipe's parameter groups (`training.solver.build_optimizer`), LR scaled to the
                 batch; the same step as `training.engine` (minus its per-step finite-loss check).
    SipMask      `training.sipmask_losses.compute_sipmask_losses` (the official losses), the same SGD recipe;
                 config `--sipmask-config` (a preset, default sipmask_r50_caffe_fpn_gn_1x, or a JSON config).
    Mask R-CNN   torchvision's training forward (its own loss dict) on the same images and instances,
                 SGD momentum 0.9, weight decay 1e-4; COCO-pretrained architecture (FrozenBN, conv1 +
                 layer1 frozen) like CondInst's FrozenBN backbone with freeze_at=2.

--amp off | bf16 | fp16 (autocast; fp16 adds a GradScaler), several as a comma list; channels_last
on CUDA (--channels-last auto). The batch is built once, outside the timing (data loading is not
measured; torchvision's own resize/normalise/batching inside its forward is). Besides wall time, the CPU
time of the process per step is recorded (cpu_ms: what a step costs on a shared machine). --profile N
prints (and stores) the N operators of one more step with the most self CPU time (torch.profiler).

    python -m bench.train_step                                  # batch 8, amp off and bf16 on CUDA
    python -m bench.train_step --device cpu --batch-size 2 --iters 3 --warmup 1 --threads 2
    python -m bench.train_step --device cpu --threads 1 --models condinst,sipmask --batch-size 4 \
        --image-size 352x480 --instances-per-image 9 --preset configs/fruits_nuts_default.json \
        --sipmask-config configs/fruits_nuts_sipmask.json --iters 3 --warmup 1 --profile 12   # fruits_nuts scale
"""
from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/train_step.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import (AMP_DTYPES, add_common_args, autocast, environment, format_table, parse_list, parse_size,
                          peak_memory_mb, release_memory, reset_peak_memory, settings_of, setup, time_fn, write_json)
from bench.models import build_maskrcnn, condinst_config, random_instances, sipmask_config
from condinst.config import CondInstConfig
from condinst.config_sources import load_config
from condinst.model import CondInst
from condinst.sipmask.model import SipMask
from training.losses import compute_losses
from training.sipmask_losses import compute_sipmask_losses
from training.solver import build_optimizer, scale_solver_for_batch
from training.transforms import TrainBatch, TrainSample, collate

MODELS = ("condinst", "maskrcnn", "sipmask")
# torchvision's detection reference recipe: LR 0.02 for 16 images, momentum 0.9, weight decay 1e-4.
MASKRCNN_LR_PER_16 = 0.02


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "train_step", iters=20, warmup=5)
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--image-size", type=parse_size, default=(800, 1067),
                        help="training image size HxW, already resized (default 800x1067)")
    parser.add_argument("--instances-per-image", type=int, default=5, help="random instances per image (default 5)")
    parser.add_argument("--amp", type=lambda s: parse_list(s), default=None,
                        help="off, bf16, fp16, comma-separated (default off,bf16 on CUDA, off on CPU)")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="channels_last model and images (auto: on CUDA only)")
    parser.add_argument("--models", type=lambda s: parse_list(s), default=["condinst", "maskrcnn"],
                        help="condinst, maskrcnn and/or sipmask (default condinst,maskrcnn)")
    parser.add_argument("--preset", default="MS_R_50_1x", help="CondInst preset or JSON config (default %(default)s)")
    parser.add_argument("--sipmask-config", default="sipmask_r50_caffe_fpn_gn_1x",
                        help="SipMask preset or JSON config (default %(default)s)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N operators of one more step with the most self CPU time (default off)")
    parser.add_argument("--maskrcnn-norm", choices=("FrozenBN", "BN"), default="FrozenBN",
                        help="FrozenBN: the COCO-pretrained architecture (default); "
                             "BN: maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)")
    parser.add_argument("--tiny", action="store_true", help="narrow models for smoke tests (not a benchmark)")
    args = parser.parse_args(argv)
    for name in args.amp or ():
        if name not in AMP_DTYPES:
            parser.error(f"--amp: unknown value {name!r} (choose from {', '.join(AMP_DTYPES)})")
    for name in args.models:
        if name not in MODELS:
            parser.error(f"--models: unknown model {name!r} (choose from {', '.join(MODELS)})")
    return args


# ---- synthetic data -------------------------------------------------------------------------------

def synthetic_samples(cfg: CondInstConfig, batch_size: int, size: tuple[int, int], instances: int,
                      seed: int) -> list[TrainSample]:
    """Random images with random elliptical instances, as `TrainTransform` would output them."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(batch_size):
        image = torch.from_numpy(rng.integers(0, 256, size=(3, *size), dtype=np.uint8))
        boxes, classes, masks = random_instances(size[0], size[1], instances, cfg.fcos.num_classes, rng)
        samples.append(TrainSample(image=image, gt_boxes=boxes, gt_classes=classes, gt_masks=masks,
                                   image_id=i, original_size=size))
    return samples


def maskrcnn_inputs(samples: list[TrainSample], cfg: CondInstConfig, device: torch.device
                    ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The same images (RGB floats in 0..1) and instances (labels 1..K, 0 = background) for torchvision."""
    images, targets = [], []
    for s in samples:
        rgb = s.image.flip(0) if cfg.input.format == "BGR" else s.image
        images.append(rgb.to(device).float().div_(255.0))
        targets.append({"boxes": s.gt_boxes.to(device), "labels": (s.gt_classes + 1).to(device),
                        "masks": s.gt_masks.to(device, torch.uint8)})
    return images, targets


# ---- steps ----------------------------------------------------------------------------------------

class DenseStep:
    """One CondInst or SipMask training iteration on a fixed batch, as `training.engine.Trainer.run_step` does it."""

    def __init__(self, model: torch.nn.Module, loss_fn, cfg, batch: TrainBatch, device: torch.device, amp: str,
                 channels_last: bool):
        self.model, self.loss_fn = model.to(device).train(), loss_fn
        self.batch = batch.to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.batch.images = self.batch.images.contiguous(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, scale_solver_for_batch(cfg.solver, len(batch)))
        self.device, self.amp_dtype = device, AMP_DTYPES[amp]
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def __call__(self) -> dict[str, torch.Tensor]:
        with autocast(self.device, self.amp_dtype):
            losses = self.loss_fn(self.model, self.batch)
        losses = {k: v.float() for k, v in losses.items()}
        return _backward_and_step(losses, self.optimizer, self.scaler)


class MaskRCNNStep:
    """One torchvision Mask R-CNN training iteration on the same images and instances."""

    def __init__(self, args: argparse.Namespace, cfg: CondInstConfig, samples: list[TrainSample],
                 device: torch.device, amp: str, channels_last: bool):
        size = samples[0].image_size
        # min_size = the image's short side: torchvision's resize is then a no-op scale of 1.
        self.model = build_maskrcnn(args.tiny, args.maskrcnn_norm, min(size), cfg.input.max_size_train).to(device)
        self.model.train()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.images, self.targets = maskrcnn_inputs(samples, cfg, device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=MASKRCNN_LR_PER_16 * len(samples) / 16, momentum=0.9,
                                         weight_decay=1e-4)
        self.device, self.amp_dtype = device, AMP_DTYPES[amp]
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def __call__(self) -> dict[str, torch.Tensor]:
        with autocast(self.device, self.amp_dtype):
            losses = self.model(self.images, self.targets)
        losses = {k: v.float() for k, v in losses.items()}
        return _backward_and_step(losses, self.optimizer, self.scaler)


def _backward_and_step(losses: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                       scaler: torch.amp.GradScaler | None) -> dict[str, torch.Tensor]:
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        optimizer.step()
    out = {k: v.detach() for k, v in losses.items()}
    out["total_loss"] = total.detach()
    return out


def measure(step, args: argparse.Namespace, device: torch.device) -> dict:
    """Warm up, time `args.iters` steps with a fresh peak-memory window, and record the last losses
    (and with --profile the operators of that last step)."""
    for _ in range(args.warmup):
        step()
    reset_peak_memory(device)
    cpu_start = time.process_time()
    timing = time_fn(step, device, args.iters, warmup=0, batch_size=args.batch_size)
    timing["cpu_ms"] = 1000 * (time.process_time() - cpu_start) / args.iters
    timing.update(peak_memory_mb(device))
    if args.profile:
        with torch.profiler.profile() as prof:
            losses = {k: float(v) for k, v in step().items()}
        timing["profile"] = top_operators(prof, args.profile)
    else:
        losses = {k: float(v) for k, v in step().items()}
    timing["last_losses"] = losses
    timing["losses_finite"] = all(math.isfinite(v) for v in losses.values())
    return timing


def top_operators(prof: torch.profiler.profile, count: int) -> list[dict]:
    """The `count` operators with the most self CPU time, with their share of the step's total."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"operator": e.key, "self_cpu_ms": e.self_cpu_time_total / 1000, "calls": e.count,
             "share": e.self_cpu_time_total / total} for e in events[:count]]


def build_step(model: str, args: argparse.Namespace, configs: dict, samples: list[TrainSample],
               device: torch.device, amp: str, channels_last: bool):
    cfg = configs[model]
    if model == "maskrcnn":
        return MaskRCNNStep(args, cfg, samples, device, amp, channels_last)
    net, loss_fn = (CondInst(cfg), compute_losses) if model == "condinst" else (SipMask(cfg), compute_sipmask_losses)
    return DenseStep(net, loss_fn, cfg, collate(samples, cfg), device, amp, channels_last)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    amps = args.amp or (["off", "bf16"] if device.type == "cuda" else ["off"])
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and device.type == "cuda")
    cfg = condinst_config(args.preset, args.tiny) if args.tiny else load_config(args.preset)
    configs = {"condinst": cfg, "maskrcnn": cfg}
    if "sipmask" in args.models:
        configs["sipmask"] = (sipmask_config(args.sipmask_config, tiny=True) if args.tiny
                              else load_config(args.sipmask_config))
    env = environment(device)
    print(f"training step on {env['device_name']} ({device}), batch {args.batch_size} at "
          f"{args.image_size[0]}x{args.image_size[1]}, channels_last {channels_last}", flush=True)
    samples = synthetic_samples(cfg, args.batch_size, args.image_size, args.instances_per_image, args.seed)
    rows = []
    for amp in amps:
        for model in args.models:
            torch.manual_seed(args.seed)
            step = build_step(model, args, configs, samples, device, amp, channels_last)
            timing = measure(step, args, device)
            del step
            gc.collect()
            release_memory(device)
            row = {"model": model, "config": configs[model].name, "amp": amp, "channels_last": channels_last,
                   "batch_size": args.batch_size, "image_size": list(args.image_size), **timing}
            rows.append(row)
            note = "" if row["losses_finite"] else "  WARNING: non-finite loss"
            print(f"  {model:9s} amp {amp:4s}: {row['median_ms']:.1f} ms/step ({row['cpu_ms']:.1f} ms CPU)  "
                  f"{row['images_per_s']:.2f} images/s{note}", flush=True)
            for op in row.get("profile", []):
                print(f"      {op['self_cpu_ms']:9.1f} ms  {100 * op['share']:5.1f}%  {op['calls']:5d} x  "
                      f"{op['operator']}")
    comparisons = []
    for amp in amps:
        by_model = {r["model"]: r for r in rows if r["amp"] == amp}
        if {"condinst", "maskrcnn"} <= set(by_model):
            ours, theirs = by_model["condinst"], by_model["maskrcnn"]
            comparisons.append({"amp": amp, "condinst_ms_per_step": ours["median_ms"],
                                "maskrcnn_ms_per_step": theirs["median_ms"],
                                "ratio_ours_over_torchvision": ours["median_ms"] / theirs["median_ms"]})
    payload = {"benchmark": "train_step", "environment": env, "settings": settings_of(args),
               "results": rows, "comparisons": comparisons}
    print()
    print(format_table(rows, [("model", "model", "{}"), ("amp", "amp", "{}"), ("batch", "batch_size", "{}"),
                              ("ms/step", "median_ms", "{:.1f}"), ("CPU ms", "cpu_ms", "{:.1f}"),
                              ("p10", "p10_ms", "{:.1f}"), ("p90", "p90_ms", "{:.1f}"), ("IQR", "iqr_ms", "{:.1f}"),
                              ("images/s", "images_per_s", "{:.2f}"), ("peak MB", "peak_allocated_mb", "{:.0f}")]))
    if comparisons:
        print()
        print(format_table(comparisons, [("amp", "amp", "{}"), ("CondInst ms", "condinst_ms_per_step", "{:.1f}"),
                                         ("Mask R-CNN ms", "maskrcnn_ms_per_step", "{:.1f}"),
                                         ("ours/torchvision", "ratio_ours_over_torchvision", "{:.3f}")]))
    print(f"\nwrote {write_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
