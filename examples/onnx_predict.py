"""Run an exported CondInst ONNX model with onnxruntime, numpy and OpenCV only (no project code).

    python -m condinst export --weights model.pth --output model.onnx
    python examples/onnx_predict.py model.onnx photo.jpg [more.jpg ...] [--score 0.3]

Everything the model needs besides its graph is in the file's ``condinst_contract`` metadata (see the
README's "ONNX model contract"): this script reads it and follows it step by step, and prints one line per
detection. `predict(session, contract, image_bgr)` returns the detections with full-size boolean masks; on
the bundled samples they match `condinst predict` (same detections, mask IoU >= 0.998).
"""
from __future__ import annotations

import argparse
import json
import sys

import cv2
import numpy as np
import onnxruntime as ort


def load(path: str) -> tuple[ort.InferenceSession, dict]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    if "condinst_contract" not in meta:
        sys.exit(f"error: {path} has no condinst_contract metadata (export it again with this version)")
    return session, json.loads(meta["condinst_contract"])


def resized_shape(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The contract's shortest-edge rule."""
    scale = min_size / min(h, w)
    new_h, new_w = (min_size, scale * w) if h < w else (scale * h, min_size)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def _resample_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of PIL's antialiased bilinear resize along one axis (triangle filter
    stretched by the scale when shrinking)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    weights = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - center + 0.5) / support))
        weights[i, lo:hi] = taps / taps.sum()
    return weights


def resize_like_pil(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 as PIL's Image.resize(BILINEAR): horizontal pass, rounded to
    uint8, then vertical pass (the project's resize; cv2.INTER_LINEAR does not antialias)."""
    def rounded(x):
        return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)
    wide = rounded(np.einsum("ox,yxc->yoc", _resample_weights(image.shape[1], w), image.astype(np.float64)))
    return rounded(np.einsum("oy,yxc->oxc", _resample_weights(image.shape[0], h), wide.astype(np.float64)))


def preprocess(image_bgr: np.ndarray, spec: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3) uint8 BGR -> the (1, 3, Hp, Wp) float32 input and the resized (h, w)."""
    resize = spec["resize"]
    if resize["mode"] != "shortest_edge":
        sys.exit(f"error: this example implements the shortest_edge resize, the model uses {resize['mode']}")
    h, w = resized_shape(*image_bgr.shape[:2], resize["min_size"], resize["max_size"])
    image = image_bgr if spec["channels"] == "BGR" else image_bgr[:, :, ::-1]
    image = resize_like_pil(image, h, w)
    x = (image.astype(np.float32) - np.float32(spec["pixel_mean"])) / np.float32(spec["pixel_std"])
    divisor = int(spec["size_divisibility"])
    hp, wp = -(-h // divisor) * divisor, -(-w // divisor) * divisor
    padded = np.zeros((hp, wp, 3), np.float32)
    padded[:h, :w] = x
    return padded.transpose(2, 0, 1)[None].copy(), (h, w)


def aligned_upsample(x: np.ndarray, factor: int) -> np.ndarray:
    """(n, m) -> (factor n, factor m): output index k reads clamp((k - factor // 2) / factor, 0, n - 1), linear."""
    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(factor * n) - factor // 2) / factor, 0, n - 1)
        lo = np.floor(pos).astype(int)
        return lo, np.minimum(lo + 1, n - 1), (pos - lo).astype(np.float32)
    r0, r1, rw = axis(x.shape[0])
    c0, c1, cw = axis(x.shape[1])
    rows = x[r0] * (1 - rw[:, None]) + x[r1] * rw[:, None]
    return rows[:, c0] * (1 - cw) + rows[:, c1] * cw


def predict(session: ort.InferenceSession, contract: dict, image_bgr: np.ndarray) -> list[dict]:
    inputs = contract["inputs"]
    tensor, (h, w) = preprocess(image_bgr, inputs["images"])
    feeds = {"images": tensor}
    for name, spec in inputs.items():
        if "default" in spec:
            feeds[name] = np.array(spec["default"], np.int64 if spec["dtype"] == "int64" else np.float32)
    if "input_size" in inputs:
        feeds["input_size"] = np.array([h, w], np.float32)
    boxes, scores, classes, logits = session.run(["boxes", "scores", "classes", "mask_logits"], feeds)
    big_h, big_w = image_bgr.shape[:2]
    threshold, factor = float(contract["mask_threshold"]), int(contract["mask_stride"])
    names, ids = contract["class_names"], contract["category_ids"]
    out = []
    for box, score, cls, logit in zip(boxes, scores, classes, logits):
        probs = 0.5 * (1.0 + np.tanh(0.5 * logit[0].astype(np.float32)))  # sigmoid without overflow
        full = aligned_upsample(probs, factor)[:h, :w]
        mask = cv2.resize(full, (big_w, big_h), interpolation=cv2.INTER_LINEAR) > threshold
        x1, y1, x2, y2 = np.clip(box * np.array([big_w / w, big_h / h] * 2), 0, [big_w, big_h] * 2).tolist()
        out.append({"category_id": ids[cls] if ids else int(cls) + 1, "class": names[cls] if names else str(cls),
                    "score": float(score), "bbox": [x1, y1, x2 - x1, y2 - y1], "mask": mask})
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--score", type=float, default=0.3, help="lowest score to report (default 0.3)")
    args = parser.parse_args(argv)
    session, contract = load(args.model)
    for path in args.images:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            print(f"error: cannot read {path}", file=sys.stderr)
            continue
        for d in predict(session, contract, image):
            if d["score"] >= args.score:
                print(f"{path}: {d['class']} {d['score']:.3f} box {[round(v, 1) for v in d['bbox']]} "
                      f"mask {int(d['mask'].sum())} px")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
