"""Frames -> per-frame CondInst results, `batch_size` frames per model call.

    for frame in segment_frames(predictor, source.frames(), batch_size=4, keep_features=True):
        frame.result        # ImageResult at the frame's size (boxes, scores, classes, masks as crops)
        frame.mask_feats    # (1, C_mask, Hp/8, Wp/8) mask-branch features (the tracker re-applies filters to them);
                            # a SipMask model's basis masks (1, M, Hp/2, Wp/2)

At most one batch of frames (and their features) is held at a time. With a PyTorch model the dense
mask features are kept (`Predictor.with_features`) so the tracker can run the dynamic mask head
on them; an exported ONNX graph gives results only (`keep_features=False`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from ..postprocess import ImageResult
from ..predictor import Predictor


@dataclass
class Frame:
    """One segmented frame. `seconds`: its share of the batch's model time (preprocessing included).

    mask_feats (1, C, Hp/8, Wp/8) of the padded batch (SipMask: the bases (1, M, Hp/2, Wp/2)) or None;
    input_size (h, w) of the resized network input (the coordinates of `result.detections`)."""

    index: int
    image: np.ndarray
    result: ImageResult
    mask_feats: torch.Tensor | None
    input_size: tuple[int, int]
    seconds: float


def segment_frames(predictor: Predictor, frames: Iterable[np.ndarray], batch_size: int = 1,
                   keep_features: bool = True) -> Iterator[Frame]:
    """Segment `frames` in order, `batch_size` at a time (frames of a video share one size)."""
    batch: list[np.ndarray] = []
    index = 0
    for image in frames:
        batch.append(image)
        if len(batch) == batch_size:
            yield from _run(predictor, batch, index, keep_features)
            index += len(batch)
            batch = []
    if batch:
        yield from _run(predictor, batch, index, keep_features)


@torch.no_grad()
def _run(predictor: Predictor, images: list[np.ndarray], start: int, keep_features: bool) -> list[Frame]:
    t0 = time.perf_counter()
    if keep_features:
        results, feats, sizes = predictor.with_features(images)
    else:
        results, feats = predictor(images), None
        sizes = [r.input_size for r in results]
    seconds = (time.perf_counter() - t0) / len(images)
    return [Frame(start + i, image, result, None if feats is None else feats[i : i + 1], tuple(size), seconds)
            for i, (image, result, size) in enumerate(zip(images, results, sizes))]
