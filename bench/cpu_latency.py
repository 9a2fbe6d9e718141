"""CPU latency on one 800x600 photo: the bundled default model, R-50 CondInst, R-50 Mask R-CNN and SipMask.

Each model runs end to end through its public API from an (H, W, 3) uint8 numpy image to boolean
masks at the image's resolution, on `--threads` CPU threads (2 by default, a laptop-like budget):

    default      assets/default_model/model.pth through `Predictor` (its own config and input size);
                 skipped with a note when the file does not exist
    condinst     R-50-FPN CondInst (MS_R_50_1x, random weights) through `Predictor` (fp32 reference
                 pipeline: PIL resize to 800 short side)
    maskrcnn     torchvision R-50-FPN Mask R-CNN (random weights) on the same image
    sipmask_544  SipMask real-time R-50 (sipmask_r50_caffe_fpn_ssd_6x, random weights): 544x544 without
                 keeping the ratio (cv2 bilinear), Fast NMS, through `Predictor`
    sipmask_r50  SipMask high-accuracy R-50 (sipmask_r50_caffe_fpn_gn_1x, random weights): 800 px short
                 side, class-wise +1 NMS with centerness factors, through `Predictor`

Every model is forced to exactly 100 detections (score threshold 0; the default model also has NMS
off, since its few classes could otherwise leave fewer than 100 on a random image); counts are checked.

    python -m bench.cpu_latency
    python -m bench.cpu_latency --threads 4 --image assets/samples/fruits_nuts_7.jpg
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/cpu_latency.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import (REPO, add_common_args, environment, format_table, parse_size, settings_of, setup,
                          time_fn, write_json)
from bench.models import (SIPMASK_ROWS, CondInstPipeline, MaskRCNNPipeline, add_model_args, build_condinst,
                          build_sipmask, check_masks_at_original_size, condinst_config_from_args, count_detections,
                          describe_models, force_detections, maskrcnn_from_args, random_images, sipmask_config)
from condinst.predictor import Predictor
from condinst.preprocess import input_resized_shape, read_image, resized_shape

DEFAULT_WEIGHTS = REPO / "assets" / "default_model" / "model.pth"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "cpu_latency", iters=10, warmup=2)
    parser.set_defaults(threads=2, device="cpu")
    parser.add_argument("--image-size", type=parse_size, default=(600, 800),
                        help="random image HxW (default 600x800, i.e. 800 wide x 600 high)")
    parser.add_argument("--image", type=Path, default=None, help="use this image file instead of a random one")
    parser.add_argument("--default-weights", type=Path, default=DEFAULT_WEIGHTS,
                        help="the default model's checkpoint (default %(default)s)")
    parser.add_argument("--no-sipmask", action="store_true", help="leave out the SipMask rows")
    add_model_args(parser)
    return parser.parse_args(argv)


def time_model(name: str, run, image: np.ndarray, expected: int, args: argparse.Namespace,
               device: torch.device) -> dict:
    """Check one call (detection count, mask size), then time `run([image])`."""
    outputs = run([image])
    counts = count_detections(outputs)
    check_masks_at_original_size(outputs, [image.shape[:2]])
    if counts != [expected]:
        raise RuntimeError(f"{name}: expected {expected} detections, got {counts[0]}")
    timing = time_fn(lambda: run([image]), device, args.iters, args.warmup)
    timing["detections"] = counts[0]
    return timing


def default_model_row(image: np.ndarray, args: argparse.Namespace, device: torch.device) -> dict:
    """The bundled model through `Predictor.from_weights`, or a skipped row when it is missing."""
    path = args.default_weights
    if not path.is_file():
        print(f"  default model: skipped, {path} not found", flush=True)
        return {"model": "default", "weights": str(path), "skipped": True,
                "note": f"{path} not found (train it first, see the README)"}
    predictor = Predictor.from_weights(path, device="cpu")
    force_detections(predictor.cfg, args.detections, nms_threshold=1.0)
    cfg = predictor.cfg
    row = {"model": "default", "weights": str(path), "skipped": False, "config": cfg.name,
           "input_size": list(resized_shape(*image.shape[:2], cfg.input.min_size_test, cfg.input.max_size_test))}
    row.update(time_model("default", predictor, image, args.detections, args, device))
    return row


def sipmask_rows(image: np.ndarray, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """SipMask real-time (544x544, Fast NMS) and high-accuracy R-50 (800 px, class-wise +1 NMS), random
    weights, through `Predictor` as `from_weights` builds it (FrozenBN folded, official mmcv resize)."""
    rows = []
    for name, preset in SIPMASK_ROWS.items():
        cfg = sipmask_config(preset, args.tiny)
        realtime = cfg.sipmask.nms == "fast"
        force_detections(cfg, args.detections, 1.0 if args.nms_off else None,
                         None if realtime else args.min_size, None if realtime else args.max_size)
        if args.tiny and realtime:
            cfg.input.min_size_test = cfg.input.max_size_test = 128
        torch.manual_seed(args.seed)
        predictor = Predictor(build_sipmask(cfg, device).optimize_for_inference(), cfg, device)
        size = input_resized_shape(*image.shape[:2], cfg.input.resize, cfg.input.min_size_test, cfg.input.max_size_test)
        row = {"model": name, "weights": "random", "skipped": False, "config": cfg.name, "input_size": list(size)}
        row.update(time_model(name, predictor, image, args.detections, args, device))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    if device.type != "cpu":
        raise SystemExit("cpu_latency measures the CPU: use --device cpu (the default)")
    if args.image is not None:
        image = read_image(args.image)
    else:
        image = random_images(args.image_size, 1, np.random.default_rng(args.seed))[0]
    env = environment(device)
    print(f"CPU latency on {env['cpu_model']}, {env['torch_threads']} threads, image "
          f"{image.shape[1]}x{image.shape[0]} (WxH)", flush=True)

    rows = [default_model_row(image, args, device)]
    cfg = condinst_config_from_args(args)
    torch.manual_seed(args.seed)
    # Both models as a user runs them on a CPU in fp32 with the same memory layout (channels_last):
    # CondInst as `Predictor.from_weights` builds it (FrozenBN folded into the convs), Mask R-CNN
    # with channels_last weights (its pipeline's `fast` mode is exactly that on the CPU).
    condinst = CondInstPipeline(build_condinst(cfg, device).optimize_for_inference(), cfg, device)
    input_size = list(resized_shape(*image.shape[:2], cfg.input.min_size_test, cfg.input.max_size_test))
    torch.manual_seed(args.seed)
    maskrcnn = MaskRCNNPipeline(maskrcnn_from_args(args, cfg), device, fast=True,
                                mask_threshold=cfg.mask_head.mask_threshold)
    maskrcnn_label = "maskrcnn_tiny" if args.tiny else f"maskrcnn_resnet50_fpn_{args.maskrcnn_norm}"
    for name, run in (("condinst", condinst.host), ("maskrcnn", maskrcnn.host)):
        row = {"model": name, "weights": "random", "skipped": False,
               "config": cfg.name if name == "condinst" else maskrcnn_label, "input_size": input_size}
        row.update(time_model(name, run, image, args.detections, args, device))
        rows.append(row)
    if not args.no_sipmask:
        rows += sipmask_rows(image, args, device)
    for row in rows:
        if not row["skipped"]:
            print(f"  {row['model']:9s}: {row['median_ms']:.0f} ms  detections {row['detections']}", flush=True)

    timed = {r["model"]: r for r in rows if not r["skipped"]}
    comparisons = [{"model": name, "ms": timed[name]["median_ms"], "maskrcnn_ms": timed["maskrcnn"]["median_ms"],
                    "ratio_over_maskrcnn": timed[name]["median_ms"] / timed["maskrcnn"]["median_ms"]}
                   for name in ("default", "condinst", *SIPMASK_ROWS) if name in timed]
    payload = {"benchmark": "cpu_latency", "environment": env, "settings": settings_of(args),
               "models": describe_models(cfg, condinst.model, maskrcnn.model), "image_size": list(image.shape[:2]),
               "results": rows, "comparisons": comparisons}
    print()
    print(format_table([r for r in rows if not r["skipped"]],
                       [("model", "model", "{}"), ("config", "config", "{}"), ("median ms", "median_ms", "{:.1f}"),
                        ("p10", "p10_ms", "{:.1f}"), ("p90", "p90_ms", "{:.1f}"), ("IQR", "iqr_ms", "{:.1f}"),
                        ("images/s", "images_per_s", "{:.2f}"), ("detections", "detections", "{}")]))
    for row in rows:
        if row["skipped"]:
            print(f"{row['model']}: skipped, {row['note']}")
    print(f"\nwrote {write_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
