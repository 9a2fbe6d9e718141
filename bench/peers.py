"""Peers from scratch on a small dataset: our CondInst recipe vs Ultralytics YOLO-seg vs torchvision Mask R-CNN.

    python -m bench.peers [--cpu-minutes 8] [--peers condinst,yolov8n-seg,yolo11n-seg,yolov8s-seg,maskrcnn]
    python -m bench.peers --smoke          # a few iterations each: checks the plumbing, not a benchmark

What a user with a small custom dataset and no GPU (and no pretrained weights) would compare: on fruits_nuts
with the bundled model's split (held-out images 15 16 17, as `make default-model`), each tool trains from
scratch with its own recipe for small data under the same CPU budget (`--cpu-minutes`: CPU seconds of the
peer's process tree, `bench.cpu_budget`; `--minutes` is only a wall cap) on `--threads` CPU threads, under
`nice -n 10`; then one evaluator (pycocotools, `training.evaluation.evaluate_results`) scores every model's
COCO results of the held-out images, and each tool's own predict path is timed on one 800x600 photo (median of
`--iters`), with PyTorch and with its ONNX Runtime / OpenVINO exports.

Each peer trains and predicts in its own subprocesses (so that its peak RSS is its own):
`bench/peer_condinst.py`, `bench/peer_yolo.py` (in the Ultralytics venv: `--yolo-python`, default
~/.cache/condinst-studio/ultralytics-venv/bin/python; its rows are skipped with a note when it is absent) and
`bench/peer_maskrcnn.py`. Nothing is downloaded. Prints one table, writes bench/results/peers.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS_DIR, environment, format_table, settings_of, write_json  # noqa: E402

SHARED = Path(os.environ.get("CONDINST_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "datasets" / "fruits_nuts" / "data"
VAL_IDS = (15, 16, 17)
PHOTO = ROOT / "assets" / "samples" / "fruits_nuts_9.jpg"  # 800x600, held-out image 17
YOLO_PYTHON = Path.home() / ".cache" / "condinst-studio" / "ultralytics-venv" / "bin" / "python"
NICE = ["nice", "-n", "10"]  # training yields to interactive work on a shared machine (timing does not: less noise)
PEERS = ("condinst", "yolov8n-seg", "yolo11n-seg", "yolov8s-seg", "maskrcnn")


def peer_commands(peer: str, args, split: Path, out: Path, results: Path) -> tuple[list[str], list[str]]:
    """The train and infer command lines of `peer`."""
    common = ["--split", str(split), "--images", str(DATA / "images"), "--out", str(out),
              "--threads", str(args.threads), "--seed", str(args.seed)]
    budget = ["--cpu-minutes", str(args.cpu_minutes), "--minutes", str(args.minutes)]
    infer = ["--results", str(results), "--latency-image", str(args.image), "--iters", str(args.iters),
             "--warmup", str(args.warmup)]
    if peer == "condinst":
        script = [sys.executable, str(ROOT / "bench" / "peer_condinst.py")]
        fixed = ["--max-iter", "2"] if args.smoke else []
        return ([*script, "train", *common, *budget, *fixed],
                [*script, "infer", *common, *infer, *(["--no-export"] if args.smoke else [])])
    if peer == "maskrcnn":
        script = [sys.executable, str(ROOT / "bench" / "peer_maskrcnn.py")]
        sizes = ["--min-size", args.maskrcnn_min_size, "--max-size", str(args.maskrcnn_max_size)]
        if args.smoke:
            sizes, infer = ["--min-size", "128", "--max-size", "160"], [*infer, "--no-export"]
        return ([*script, "train", *common, *sizes, *budget],
                [*script, "infer", *common, *sizes, *infer])
    script = [str(args.yolo_python), str(ROOT / "bench" / "peer_yolo.py")]
    smoke = ["--max-epochs", "1", "--imgsz", "128", "--batch", "4"] if args.smoke else []
    return ([*script, "train", *common, "--model", f"{peer}.yaml", *budget, *smoke],
            [*script, "infer", *common, "--weights", str(out / "train" / "weights" / "last.pt"), *infer,
             *([*smoke[2:4], "--formats", ""] if args.smoke else [])])


def run_peer(peer: str, args, split: Path, work: Path) -> dict:
    """Train, predict and score one peer; a failure is a row with its reason, not a crash."""
    from pycocotools.coco import COCO

    from training.evaluation import evaluate_results

    out, results = work / peer, work / f"{peer}_results.json"
    train_cmd, infer_cmd = peer_commands(peer, args, split, out, results)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads), "YOLO_OFFLINE": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}  # idle OpenMP threads sleep: no CPU burnt spinning on a shared machine
    row = {"peer": peer}
    for step, command in (("train", train_cmd), ("infer", infer_cmd)):
        start = time.perf_counter()
        niced = [*NICE, *command] if step == "train" else command
        done = subprocess.run(niced, cwd=work, env=env, capture_output=True, text=True)
        (work / f"{peer}_{step}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{peer} {step} failed ({done.returncode}): {tail}", file=sys.stderr)
            return {**row, "error": f"{step}: {tail}"[:300]}
        row[step] = json.loads((out / f"{step}.json").read_text())
        row[f"{step}_wall_s"] = time.perf_counter() - start
        print(f"{peer} {step}: {row[f'{step}_wall_s']:.0f} s", file=sys.stderr)
    gt = COCO(str(split / "val.json"))
    metrics, _ = evaluate_results(gt, json.loads(results.read_text()), sorted(VAL_IDS))
    row["metrics"] = metrics
    latency = row["infer"]["latency"]
    row.update(mask_ap=_pct(metrics["segm"]["AP"]), mask_ap50=_pct(metrics["segm"]["AP50"]),
               box_ap=_pct(metrics["bbox"]["AP"]), params_m=row["infer"]["params"] / 1e6,
               train_min=row["train"]["train_s"] / 60, train_cpu_min=row["train"]["cpu_s"] / 60,
               train_rss_mb=row["train"]["peak_rss_mb"],
               infer_rss_mb=row["infer"]["peak_rss_mb"], detections=len(json.loads(results.read_text())),
               **{f"{k}_ms": latency[k]["median_ms"] if k in latency else None
                  for k in ("PyTorch", "onnxruntime", "openvino")})
    row["schedule"] = _schedule(row["train"])
    return row


def _pct(value):
    return None if value is None else 100 * value


def _schedule(train: dict) -> str:
    if "iterations" in train:
        return f"{train['iterations']} it x {train['batch']} ({train['epochs']:.0f} ep)"
    return f"{train['epochs']} ep x {train['images']} img"


COLUMNS = [("peer", "peer", "{}"), ("train CPU min", "train_cpu_min", "{:.1f}"), ("wall min", "train_min", "{:.1f}"),
           ("schedule", "schedule", "{}"),
           ("mask AP", "mask_ap", "{:.1f}"), ("mask AP50", "mask_ap50", "{:.1f}"), ("box AP", "box_ap", "{:.1f}"),
           ("params M", "params_m", "{:.2f}"), ("PyTorch ms", "PyTorch_ms", "{:.0f}"),
           ("ORT ms", "onnxruntime_ms", "{:.0f}"), ("OpenVINO ms", "openvino_ms", "{:.0f}"),
           ("train RSS MB", "train_rss_mb", "{:.0f}"), ("infer RSS MB", "infer_rss_mb", "{:.0f}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated, from: " + ", ".join(PEERS))
    parser.add_argument("--cpu-minutes", type=float, default=8.0,
                        help="training budget per peer in CPU minutes of its process tree (user + system)")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock cap per peer's training (a safety)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of training and latency")
    parser.add_argument("--iters", type=int, default=10, help="timed predictions of the latency photo (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image", type=Path, default=PHOTO, help="latency photo (800x600)")
    parser.add_argument("--yolo-python", type=Path, default=Path(os.environ.get("CONDINST_YOLO_PYTHON", YOLO_PYTHON)),
                        help="python of the venv that has `ultralytics` (default %(default)s)")
    parser.add_argument("--maskrcnn-min-size", default="288,320,352", help="Mask R-CNN train sizes (test: the last)")
    parser.add_argument("--maskrcnn-max-size", type=int, default=640)
    parser.add_argument("--smoke", action="store_true", help="2 iterations / 1 small epoch / a few seconds per peer, "
                        "PyTorch latency once, no exports: checks the plumbing, not a benchmark")
    parser.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "peers.json")
    args = parser.parse_args()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        parser.error(f"--peers: unknown {', '.join(unknown)} (known: {', '.join(PEERS)})")
    if not (args.threads >= 1 and args.iters >= 1 and args.warmup >= 0 and args.minutes > 0 and args.cpu_minutes > 0):
        parser.error("--threads and --iters must be >= 1, --warmup >= 0, --minutes and --cpu-minutes > 0")
    if not (DATA / "trainval.json").is_file() or not args.image.is_file():
        parser.error(f"needs {DATA / 'trainval.json'} and {args.image}")
    if args.smoke:
        args.cpu_minutes, args.iters, args.warmup = min(args.cpu_minutes, 0.3), 1, 0
    notes = [f"shared machine: {os.cpu_count()} cores shared with other work (load average at the start "
             f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}); budgets are CPU seconds so each peer is charged only "
             "what it used, training ran under `nice -n 10`, latencies are medians and still carry the load's noise"]
    if not args.yolo_python.is_file() and any(p.startswith("yolo") for p in peers):
        notes.append(f"Ultralytics rows skipped: no {args.yolo_python} (a venv with `ultralytics`)")
        peers = [p for p in peers if not p.startswith("yolo")]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="peers-"))
    work.mkdir(parents=True, exist_ok=True)
    split = work / "split"
    subprocess.run([sys.executable, str(ROOT / "tools" / "split_coco.py"), "--ann", str(DATA / "trainval.json"),
                    "--val-ids", *map(str, VAL_IDS), "--out-dir", str(split)], check=True, capture_output=True)
    rows = [run_peer(peer, args, split, work) for peer in peers]
    print(format_table([r for r in rows if "error" not in r], COLUMNS))
    for note in notes + [f"{r['peer']} failed: {r['error']}" for r in rows if "error" in r]:
        print(note)
    import torch

    payload = {"benchmark": "peers", "settings": settings_of(args), "notes": notes, "rows": rows,
               "held_out_image_ids": list(VAL_IDS), "work_dir": str(work),
               "environment": environment(torch.device("cpu")), "load_average": os.getloadavg()}
    write_json(args.out, json.loads(anonymised(json.dumps(payload))))


def anonymised(text: str) -> str:
    """The JSON text with this checkout's and the home folder's paths written as `.` and `~`."""
    return text.replace(str(ROOT.parent / "shared"), "../shared").replace(str(ROOT), ".").replace(str(Path.home()), "~")


if __name__ == "__main__":
    main()
