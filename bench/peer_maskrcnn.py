"""torchvision Mask R-CNN R-50-FPN as a peer of `bench.peers`, trained from scratch on a CPU budget.

    python bench/peer_maskrcnn.py train --split SPLIT --images IMAGES --out DIR --cpu-minutes 8 [--min-size 288,320,352]
    python bench/peer_maskrcnn.py infer --split SPLIT --images IMAGES --out DIR --results results.json

`maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)` (BatchNorm, every layer trainable: what
torchvision builds without weights) with torchvision's detection reference recipe: SGD momentum 0.9, LR 0.02 x
batch / 16, weight decay 1e-4, linear warm-up over the first epoch from 1/1000, x0.1 at 16/26 and 22/26 of the
schedule, horizontal flip. The schedule is laid over the CPU budget (`--cpu-minutes`, `bench.cpu_budget`: the
LR steps at those fractions of the CPU seconds spent; `--minutes` caps the wall). `--min-size/--max-size` set
its resize (torchvision's 800 / 1333 costs ~5x the time of an image at 352 / 640 on the CPU; the budget
decides). `infer` writes COCO results of the held-out images (torchvision's defaults: score 0.05, 100
detections, masks at 0.5), the CPU latency of one photo with PyTorch and, when the export works, its ONNX
graph in ONNX Runtime and OpenVINO, the parameter count and the peak RSS.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.cpu_budget import CpuBudget  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(args):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    sizes = tuple(int(s) for s in str(args.min_size).split(","))
    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=args.num_classes + 1,
                                 min_size=sizes, max_size=args.max_size)


def load_split(split: Path, images: Path, name: str):
    """[(image float CHW in [0, 1], target dict)] of split/name.json, categories kept as their COCO ids."""
    from PIL import Image
    from pycocotools.coco import COCO

    coco = COCO(str(split / f"{name}.json"))
    items = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        image = torch.from_numpy(np.asarray(Image.open(images / info["file_name"]).convert("RGB")).copy())
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)) if a["bbox"][2] > 1
                and a["bbox"][3] > 1]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        masks = torch.from_numpy(np.stack([coco.annToMask(a) for a in anns])) if anns else torch.zeros(0, *image.shape[:2])
        target = {"boxes": boxes, "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                  "masks": masks.to(torch.uint8)}
        items.append((image.permute(2, 0, 1).float() / 255, target, info))
    return items


def hflip(image, target):
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {"boxes": boxes, "labels": target["labels"], "masks": target["masks"].flip(-1)}


def train(args) -> dict:
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    items = load_split(Path(args.split), Path(args.images), "train")
    model = build(args)
    model.train()
    lr = 0.02 * args.batch / 16
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    warmup = max(1, len(items) // args.batch - 1)  # the reference warms up over the first epoch
    budget = CpuBudget(60 * args.cpu_minutes)  # the schedule is laid over CPU seconds spent
    wall_cap = 60 * args.minutes  # a safety: a machine so loaded that the CPU budget takes forever
    start = time.perf_counter()
    iteration = 0
    while not budget.reached() and (elapsed := time.perf_counter() - start) < wall_cap:
        fraction = budget.fraction()
        factor = 1.0 if fraction < 16 / 26 else 0.1 if fraction < 22 / 26 else 0.01
        if iteration < warmup:
            alpha = iteration / warmup
            factor *= 1e-3 * (1 - alpha) + alpha
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        batch = [hflip(*item[:2]) if random.random() < 0.5 else item[:2] for item in random.sample(items, args.batch)]
        losses = model([b[0] for b in batch], [b[1] for b in batch])
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise SystemExit(f"iteration {iteration}: loss is {loss.item()}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        iteration += 1
        if iteration % 10 == 0:
            print(f"iter {iteration} {elapsed:.0f}s {budget.used():.0f} cpu-s loss {loss.item():.3f}", file=sys.stderr)
    weights = Path(args.out) / "model_final.pth"
    torch.save(model.state_dict(), weights)
    return {"train_s": time.perf_counter() - start, "iterations": iteration, "batch": args.batch,
            "epochs": iteration * args.batch / len(items), "min_size": args.min_size, "max_size": args.max_size,
            "weights": str(weights), "peak_rss_mb": peak_rss_mb(), "cpu_s": budget.used(),
            "stopped_by": "cpu budget" if budget.reached() else "wall cap"}


def infer(args) -> dict:
    from pycocotools import mask as mask_utils

    model = build(args)
    model.load_state_dict(torch.load(Path(args.out) / "model_final.pth", weights_only=True))
    model.eval()
    results = []
    with torch.inference_mode():
        for image, _, info in load_split(Path(args.split), Path(args.images), "val"):
            out = model([image])[0]
            for box, score, label, mask in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist(),
                                               out["masks"][:, 0] > 0.5):
                rle = mask_utils.encode(np.asfortranarray(mask.numpy()))
                rle["counts"] = rle["counts"].decode()
                results.append({"image_id": info["id"], "category_id": int(label), "score": float(score),
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "segmentation": rle})
    Path(args.results).write_text(json.dumps(results))
    from PIL import Image

    photo = torch.from_numpy(np.asarray(Image.open(args.latency_image).convert("RGB")).copy())

    def predict():  # uint8 photo -> boolean masks at its size, as the other peers
        with torch.inference_mode():
            out = model([photo.permute(2, 0, 1).float() / 255])[0]
            return out["masks"][:, 0] > 0.5

    latency = {"PyTorch": _latency(predict, args)}
    exports = {}
    if args.no_export:
        return {"detections": len(results), "latency": latency, "exports": exports,
                "params": sum(p.numel() for p in model.parameters()), "peak_rss_mb": peak_rss_mb()}
    try:
        latency.update(_onnx_latency(model, photo, args))
        exports["onnx"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a failed export is one line in the table
        exports["onnx"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:200]
    return {"detections": len(results), "latency": latency, "exports": exports,
            "params": sum(p.numel() for p in model.parameters()), "peak_rss_mb": peak_rss_mb()}


def _onnx_latency(model, photo, args) -> dict:
    """Export with torch.onnx (opset 17, TorchScript exporter: torchvision's tested path), time the graph in
    ONNX Runtime and OpenVINO, masks thresholded at 0.5 as in PyTorch."""
    import onnxruntime as ort

    path = Path(args.out) / "maskrcnn.onnx"
    image = photo.permute(2, 0, 1).float() / 255
    torch.onnx.export(model, ([image],), str(path), opset_version=17, dynamo=False,
                      input_names=["image"], output_names=["boxes", "labels", "scores", "masks"],
                      dynamic_axes={"image": {1: "height", 2: "width"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"image": image.numpy()}
    latency = {"onnxruntime": _latency(lambda: session.run(None, feed)[3][:, 0] > 0.5, args)}
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": args.threads})
    latency["openvino"] = _latency(lambda: compiled(feed)[3][:, 0] > 0.5, args)
    return latency


def _latency(fn, args) -> dict:
    for _ in range(args.warmup):
        fn()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "times_ms": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("train", "infer"))
    parser.add_argument("--split", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--results")
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--min-size", default="800")
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--batch", type=int, default=2, help="images per iteration (the reference: 2 per GPU)")
    parser.add_argument("--cpu-minutes", type=float, default=8.0, help="training budget in CPU minutes")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock cap (a safety)")
    parser.add_argument("--no-export", action="store_true", help="PyTorch latency only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-image")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out = train(args) if args.step == "train" else infer(args)
    (Path(args.out) / f"{args.step}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "latency"}), file=sys.stderr)


if __name__ == "__main__":
    main()
