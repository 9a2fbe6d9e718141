"""Ultralytics YOLO-seg as a peer of `bench.peers`: runs inside the Ultralytics venv, not ours.

    python bench/peer_yolo.py train --model yolov8n-seg.yaml --split SPLIT --images IMAGES --out DIR --cpu-minutes 8
    python bench/peer_yolo.py infer --weights DIR/weights/last.pt --split SPLIT --images IMAGES --out DIR

`train` converts the COCO split to YOLO labels with Ultralytics' own converter and trains from scratch (a yaml
model, no weights) with Ultralytics' defaults for a custom dataset (imgsz 640, batch 16, optimizer auto,
mosaic, its own augmentations) for a CPU budget (`--cpu-minutes`, `bench.cpu_budget`, counting its
data-loading worker): after each epoch the epochs are re-fitted to the budget at the CPU seconds per epoch so
far and the LR schedule re-laid over them (what its own `time=` mode does with wall time), and the epoch in
which the budget runs out is the last. `infer` writes the held-out images' COCO results (boxes and RLE masks
at the original size, conf 0.001 as Ultralytics' own validation), the CPU latency of one photo with PyTorch
and with the ONNX / OpenVINO exports (default conf 0.25), and the parameter count. Each step writes a JSON
with its peak RSS. Nothing is downloaded: the process runs with YOLO_OFFLINE=1, plots off, settings sync off.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.cpu_budget import CpuBudget  # noqa: E402  (standard library only: fine in the Ultralytics venv)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_dataset(split: Path, images: Path, root: Path) -> tuple[Path, dict[int, int]]:
    """YOLO layout of split/{train,val}.json under `root` (labels by Ultralytics' converter, images linked);
    returns the data yaml and the class index -> COCO category id map."""
    from ultralytics.data.converter import convert_coco

    labels = root / "coco"
    labels.mkdir(parents=True)
    for name in ("train", "val"):
        (labels / f"{name}.json").write_text((split / f"{name}.json").read_text())
    convert_coco(labels_dir=str(labels), save_dir=str(root / "yolo"), use_segments=True, cls91to80=False)
    categories = json.loads((split / "train.json").read_text())["categories"]
    for name in ("train", "val"):
        folder = root / "yolo" / "images" / name
        folder.mkdir(parents=True)
        for image in json.loads((split / f"{name}.json").read_text())["images"]:
            (folder / image["file_name"]).symlink_to((images / image["file_name"]).resolve())
    names = {c["id"] - 1: c["name"] for c in categories}  # the converter writes category_id - 1
    data = root / "data.yaml"
    data.write_text(json.dumps({"path": str(root / "yolo"), "train": "images/train", "val": "images/val",
                                "names": names}))
    return data, {index: index + 1 for index in names}


def train(args) -> dict:
    import torch
    from ultralytics import YOLO, settings

    settings.update({"sync": False})
    torch.set_num_threads(args.threads)
    root = Path(args.out)
    data, _ = prepare_dataset(Path(args.split), Path(args.images), root / "data")
    model = YOLO(args.model)
    budget = CpuBudget(60 * args.cpu_minutes)
    model.add_callback("on_train_batch_end", lambda trainer: _stop_at_budget(trainer, budget))
    model.add_callback("on_fit_epoch_end", lambda trainer: _refit_epochs(trainer, budget, args.max_epochs))
    start = time.perf_counter()
    # time= puts the trainer in its time mode (epochs re-fitted after each epoch, LR schedule re-laid over
    # them); the callbacks then re-fit to the CPU budget instead, and time= stays only as a wall cap.
    model.train(data=str(data), time=args.minutes / 60, epochs=args.max_epochs, imgsz=args.imgsz, batch=args.batch,
                device="cpu", workers=args.workers, plots=False, amp=False, pretrained=False, seed=args.seed,
                project=str(root), name="train", exist_ok=True, val=False, verbose=False)
    seconds = time.perf_counter() - start
    trainer = model.trainer
    return {"train_s": seconds, "epochs": trainer.epoch + 1, "images": len(trainer.train_loader.dataset),
            "batch": args.batch, "imgsz": args.imgsz, "weights": str(Path(trainer.last)), "peak_rss_mb": peak_rss_mb(),
            "cpu_s": budget.used(), "stopped_by": "cpu budget" if budget.reached() else "epochs or wall cap"}


def _stop_at_budget(trainer, budget: CpuBudget) -> None:
    """on_train_batch_end: the trainer ends the epoch (validates, saves last.pt) and stops."""
    if budget.reached():
        trainer.stop = True


def _refit_epochs(trainer, budget: CpuBudget, max_epochs: int) -> None:
    """on_fit_epoch_end (after the trainer's own wall-time re-fit): as many epochs as the CPU budget holds at
    the CPU seconds per epoch so far, the LR schedule re-laid over them as the trainer's time mode does."""
    done = trainer.epoch - trainer.start_epoch + 1
    epochs = budget.units_that_fit(budget.used(), done, max_epochs)
    trainer.epochs = trainer.args.epochs = epochs
    trainer._setup_scheduler()
    trainer.scheduler.last_epoch = trainer.epoch
    wall_out = (time.time() - trainer.train_time_start) > trainer.args.time * 3600
    trainer.stop = wall_out or budget.reached() or done >= epochs


def infer(args) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from pycocotools import mask as mask_utils
    from ultralytics import YOLO, settings

    settings.update({"sync": False})
    torch.set_num_threads(args.threads)
    model = YOLO(args.weights)
    val = json.loads((Path(args.split) / "val.json").read_text())
    results = []
    for image in val["images"]:
        path = Path(args.images) / image["file_name"]
        out = model.predict(str(path), imgsz=args.imgsz, conf=0.001, iou=0.7, max_det=100, retina_masks=True,
                            device="cpu", verbose=False)[0]
        if out.masks is None:
            continue
        masks = out.masks.data.numpy().astype(bool)
        for box, score, cls, mask in zip(out.boxes.xyxy.tolist(), out.boxes.conf.tolist(), out.boxes.cls.tolist(),
                                         masks):
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            x0, y0, x1, y1 = box
            results.append({"image_id": image["id"], "category_id": int(cls) + 1, "score": float(score),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": rle})
    photo = np.asarray(Image.open(args.latency_image).convert("RGB"))[:, :, ::-1].copy()  # BGR, as cv2 reads
    latency = {"PyTorch": _latency(model, photo, args)}
    params = sum(p.numel() for p in model.model.parameters())
    exports = {}
    for fmt in filter(None, args.formats.split(",")):
        try:
            extra = {"simplify": False} if fmt == "onnx" else {}  # onnxslim is not installed; OpenVINO refuses the flag
            exported = model.export(format=fmt, imgsz=args.imgsz, device="cpu", verbose=False, **extra)
            latency[_runtime(fmt)] = _latency(YOLO(exported, task="segment"), photo, args)
            exports[fmt] = "ok"
        except Exception as exc:  # noqa: BLE001 - a failed export is one line in the table, not a crash
            exports[fmt] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    Path(args.results).write_text(json.dumps(results))
    return {"detections": len(results), "latency": latency, "exports": exports, "params": params,
            "peak_rss_mb": peak_rss_mb()}


def _runtime(fmt: str) -> str:
    return {"onnx": "onnxruntime", "openvino": "openvino"}.get(fmt, fmt)


def _latency(model, photo, args) -> dict:
    """Median ms of one predict (preprocess, network, NMS, masks at the photo's size), default conf."""
    for _ in range(args.warmup):
        model.predict(photo, imgsz=args.imgsz, retina_masks=True, device="cpu", verbose=False)
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        model.predict(photo, imgsz=args.imgsz, retina_masks=True, device="cpu", verbose=False)
        times.append(1000 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "times_ms": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("train", "infer"))
    parser.add_argument("--model", default="yolov8n-seg.yaml")
    parser.add_argument("--weights")
    parser.add_argument("--split", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--out", required=True, help="folder of the run; the step's JSON is written as OUT/STEP.json")
    parser.add_argument("--results", help="COCO results JSON to write (infer)")
    parser.add_argument("--cpu-minutes", type=float, default=8.0, help="training budget in CPU minutes")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock cap (a safety)")
    parser.add_argument("--max-epochs", type=int, default=300, help="ceiling; the CPU budget stops first")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-image")
    parser.add_argument("--formats", default="onnx,openvino")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    out = train(args) if args.step == "train" else infer(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.step}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "latency"}), file=sys.stderr)


if __name__ == "__main__":
    main()
