"""The labeling loop's fruits_nuts start model: CondInst trained from scratch on a few images, on CPU, cached.

    weights, info = start_model(trainval_json, images_dir, image_ids=(0, 1, 2), iterations=300, batch=2)

The bundled model's architecture and config (configs/fruits_nuts_default.json: quarter-width R-50, GN) on
only `image_ids`, with a short schedule (LR 0.01, warm-up 1/6, x0.1 at 80%), through the project's own
`python -m condinst train` (seed 0, so a rerun on this machine gives the same weights). The checkpoint
goes to runs/labeling_loop/<key>/ (ignored by git), keyed by the images and the schedule: a second run
with the same settings reuses it. `info` says how long the training took (when it ran in this call).
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO
from bench.labeling.datasets import coco_subset

CONFIG = REPO / "configs" / "fruits_nuts_default.json"
CACHE = REPO / "runs" / "labeling_loop"


def short_schedule(config: dict, iterations: int, batch: int) -> dict:
    """The bundled model's config with a from-scratch schedule of `iterations` x `batch` images."""
    config = json.loads(json.dumps(config))
    solver = config["solver"]
    solver.update(ims_per_batch=batch, max_iter=iterations, warmup_iters=max(1, iterations // 6),
                  steps=[max(1, int(iterations * 0.8))], checkpoint_period=iterations)
    return config


def start_model(trainval: Path, images_dir: Path, image_ids: tuple[int, ...], iterations: int, batch: int,
                threads: int = 2, cache: Path = CACHE) -> tuple[Path, dict]:
    """(checkpoint, info) of the start model trained on `image_ids` of `trainval` (cached under `cache`)."""
    data = json.loads(Path(trainval).read_text())
    known = {image["id"] for image in data["images"]}
    missing = [i for i in image_ids if i not in known]
    if missing:
        raise ValueError(f"{trainval}: no image with id {missing[0]} for the start model")
    config = short_schedule(json.loads(CONFIG.read_text()), iterations, batch)
    subset = coco_subset(data, image_ids)
    key = hashlib.sha256(json.dumps([config, subset], sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache) / f"start_{'_'.join(map(str, image_ids))}_{iterations}x{batch}_{key}"
    weights = folder / "train" / "model_final.pth"
    info = {"image_ids": list(image_ids), "iterations": iterations, "batch": batch, "weights": str(weights),
            "config": str(CONFIG.relative_to(REPO))}
    record = folder / "info.json"
    if weights.is_file() and record.is_file():
        return weights, {**json.loads(record.read_text()), "cached": True}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    (folder / "train.json").write_text(json.dumps(subset))
    command = [sys.executable, "-m", "condinst", "train", "--config", str(folder / "config.json"),
               "--train-ann", str(folder / "train.json"), "--train-images", str(images_dir),
               "--output-dir", str(folder / "train"), "--device", "cpu", "--num-workers", "0",
               "--log-period", str(max(1, iterations // 10)), "--no-progress"]
    print(f"training the start model on images {list(image_ids)}: {iterations} iterations x {batch} (CPU) ...",
          flush=True)
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    (folder / "train.log").write_text(done.stdout)
    if done.returncode != 0 or not weights.is_file():
        raise RuntimeError(f"start model training failed ({done.returncode}): {done.stdout.strip()[-400:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    info.update(wall_s=round(time.perf_counter() - start, 1),
                cpu_s=round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1))
    record.write_text(json.dumps(info, indent=1))
    return weights, {**info, "cached": False}
