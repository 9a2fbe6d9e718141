"""Mask post-processing: K full-size masks (the official computation) vs per-instance pasting.

    python bench/postprocess.py [--json bench/results/postprocess.json]

Synthetic mask logits of K instances (Gaussian blobs of 2-10% of the image side, like real objects)
at stride 4 of a 800x1088 padded input; output at the photo sizes below. Prints a table: time, bytes
of the masks kept, and whether the masks are identical.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from condinst.postprocess import mask_probs_to_image, paste_masks

CASES = [((480, 640), 100), ((3000, 4000), 50)]  # (photo H, W), instances


def blobs(k: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    cy, cx = torch.rand(k, generator=g) * h, torch.rand(k, generator=g) * w
    r = (0.02 + 0.08 * torch.rand(k, generator=g)) * max(h, w)
    d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    return (4 * (1 - d2 / r[:, None, None] ** 2)).sigmoid()[:, None]


def dense_reference(probs, padded, resized, out, threshold=0.5, chunk=16):
    masks = torch.zeros((probs.shape[0], *out), dtype=torch.bool)
    for s in range(0, probs.shape[0], chunk):
        masks[s : s + chunk] = mask_probs_to_image(probs[s : s + chunk], padded, resized, out) > threshold
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench/results/postprocess.json")
    args = parser.parse_args()
    padded, resized = (800, 1088), (800, 1067)
    rows = []
    print(f"{'photo':>11} {'K':>4} {'dense ms':>9} {'pasted ms':>10} {'dense MB':>9} {'pasted MB':>10} identical")
    for (h, w), k in CASES:
        resized = (800, round(800 * w / h)) if h <= w else (round(800 * h / w), 800)
        probs = blobs(k, padded[0] // 4, padded[1] // 4)
        t = time.perf_counter()
        dense = dense_reference(probs, padded, resized, (h, w))
        t_dense = time.perf_counter() - t
        t = time.perf_counter()
        pasted = paste_masks(probs, padded, resized, (h, w), 0.5)
        t_pasted = time.perf_counter() - t
        identical = bool(torch.equal(pasted.dense(), dense))
        row = {"photo": [h, w], "instances": k, "dense_ms": 1000 * t_dense, "pasted_ms": 1000 * t_pasted,
               "dense_mb": dense.numel() / 2**20, "pasted_mb": sum(c.numel() for c in pasted.crops) / 2**20,
               "identical": identical}
        rows.append(row)
        print(f"{h:>5}x{w:<5} {k:>4} {row['dense_ms']:>9.0f} {row['pasted_ms']:>10.0f} {row['dense_mb']:>9.1f} "
              f"{row['pasted_mb']:>10.1f} {identical}")
        del dense
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
