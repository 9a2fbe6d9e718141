"""Our CondInst recipe as a peer of `bench.peers`: the bundled model's recipe fitted to a CPU budget.

    python bench/peer_condinst.py train --split SPLIT --images IMAGES --out DIR --cpu-minutes 8
    python bench/peer_condinst.py infer --split SPLIT --images IMAGES --out DIR --results results.json

`train` runs `condinst train` with configs/fruits_nuts_default.json (the recipe of `make default-model`: SGD
0.01, batch 4, multi-scale 288-352, flip, 1200 iterations) scaled to the CPU budget (`--cpu-minutes`, the
probe included; `--minutes` caps the wall): a 10-iteration probe measures the CPU seconds per iteration (its
last step time x its CPU/wall ratio), then the real run gets as many iterations as fit in what is left (its
schedule is fixed before it starts, as `condinst train` needs), with the recipe's LR steps at the same
fractions (900/1200, 1100/1200) and its warm-up (100, at most a twelfth of the run). `infer` writes the
held-out images' COCO results (the config's test settings), the CPU latency of one photo with PyTorch and with
the whole exported graph in ONNX Runtime and OpenVINO, the parameter count and the peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "configs" / "fruits_nuts_default.json"
PROBE_ITERS = 10


def scaled_config(max_iter: int, out: Path) -> Path:
    """The recipe with `max_iter` iterations, its steps and warm-up at the same fractions."""
    cfg = json.loads(RECIPE.read_text())
    solver = cfg["solver"]
    full = solver["max_iter"]
    solver["steps"] = [max(1, round(step * max_iter / full)) for step in solver["steps"]]
    solver["warmup_iters"] = min(solver["warmup_iters"], max(1, max_iter // 12))
    solver["max_iter"] = max_iter
    solver["checkpoint_period"] = max_iter
    out.write_text(json.dumps(cfg, indent=1))
    return out


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_train(args, max_iter: int, out: Path, timeout_s: float | None = None) -> tuple[float, float]:
    """`condinst train` for `max_iter` iterations into `out`; returns its (wall, CPU) seconds."""
    config = scaled_config(max_iter, out.parent / f"{out.name}_config.json")
    command = [sys.executable, "-m", "condinst", "train", "--config", str(config), "--device", "cpu",
               "--num-workers", "1", "--no-progress", "--log-period", str(min(5, max_iter)), "--seed", str(args.seed),
               "--train-ann", str(Path(args.split) / "train.json"), "--train-images", args.images,
               "--output-dir", str(out)]
    start, cpu_start = time.perf_counter(), children_cpu_s()
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   stdout=subprocess.DEVNULL, timeout=timeout_s)
    return time.perf_counter() - start, children_cpu_s() - cpu_start


def iterations_for_budget(budget_cpu_s: float, probe_wall_s: float, probe_cpu_s: float, step_wall_s: float,
                          probe_iters: int = PROBE_ITERS) -> tuple[int, float]:
    """Iterations of the real run that fit in what the probe left of `budget_cpu_s`, and the CPU seconds per
    iteration: the probe's last logged step time (wall, past the first slow steps) times its CPU/wall ratio;
    the rest of the probe's CPU (start-up: imports, model, data) is paid again by the real run."""
    step_cpu_s = step_wall_s * probe_cpu_s / probe_wall_s
    startup_cpu_s = max(0.0, probe_cpu_s - probe_iters * step_cpu_s)
    return max(probe_iters, int((budget_cpu_s - probe_cpu_s - startup_cpu_s) / step_cpu_s)), step_cpu_s


def train(args) -> dict:
    out = Path(args.out)
    peak = lambda: resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # noqa: E731
    if args.max_iter:  # a fixed schedule (the smoke run): no probe
        train_s, cpu_s = run_train(args, args.max_iter, out / "train")
        return {"train_s": train_s, "iterations": args.max_iter, "batch": 4, "epochs": args.max_iter * 4 / 15,
                "weights": str(out / "train" / "model_final.pth"), "peak_rss_mb": peak(), "cpu_s": cpu_s}
    wall_cap = 60 * args.minutes
    probe_s, probe_cpu_s = run_train(args, PROBE_ITERS, out / "probe", timeout_s=wall_cap)
    lines = [json.loads(line) for line in (out / "probe" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    step_s = [line["time"] for line in lines if "time" in line][-1]  # the last window: past the first slow steps
    max_iter, step_cpu_s = iterations_for_budget(60 * args.cpu_minutes, probe_s, probe_cpu_s, step_s)
    train_s, cpu_s = run_train(args, max_iter, out / "train", timeout_s=max(60.0, wall_cap - probe_s))
    return {"train_s": probe_s + train_s, "probe_s": probe_s, "probe_cpu_s": probe_cpu_s,
            "probe_s_per_iter": step_s, "probe_cpu_s_per_iter": step_cpu_s, "iterations": max_iter,
            "batch": 4, "epochs": max_iter * 4 / 15, "weights": str(out / "train" / "model_final.pth"),
            "peak_rss_mb": peak(), "cpu_s": probe_cpu_s + cpu_s}


def infer(args) -> dict:
    import torch

    from bench.common import time_fn
    from condinst.export import export_onnx
    from condinst.predictor import Predictor, load_model
    from condinst.preprocess import read_image
    from training.data import CocoInstances
    from training.evaluation import evaluate

    weights = Path(args.out) / "train" / "model_final.pth"
    predictor = Predictor.from_weights(weights)
    evaluate(predictor, CocoInstances(Path(args.split) / "val.json", args.images), output_file=args.results,
             progress=False, log_summary=False)
    photo = read_image(args.latency_image)
    cpu = torch.device("cpu")
    latency = {"PyTorch": time_fn(lambda: predictor(photo), cpu, args.iters, args.warmup)}
    model, cfg = load_model(weights)
    params = sum(p.numel() for p in model.parameters())
    if args.no_export:
        return {"latency": latency, "exports": {}, "params": params,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    onnx_path = export_onnx(model.optimize_for_inference(), cfg, Path(args.out) / "model.onnx")
    for backend in ("onnxruntime", "openvino"):
        runtime = Predictor.from_weights(onnx_path, threads=args.threads, backend=backend)
        latency[backend] = time_fn(lambda r=runtime: r(photo), cpu, args.iters, args.warmup)
    return {"latency": latency, "exports": {"onnx": "ok", "openvino": "ok"}, "params": params,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("train", "infer"))
    parser.add_argument("--split", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--results")
    parser.add_argument("--cpu-minutes", type=float, default=8.0,
                        help="training budget in CPU minutes (probe included)")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock cap (a safety)")
    parser.add_argument("--max-iter", type=int, help="train this many iterations instead of fitting the budget")
    parser.add_argument("--no-export", action="store_true", help="PyTorch latency only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-image")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out = train(args) if args.step == "train" else infer(args)
    (Path(args.out) / f"{args.step}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "latency"}), file=sys.stderr)


if __name__ == "__main__":
    main()
