"""From network outputs at the resized/padded input to boxes and masks at the original image size.

Masks are pasted per instance, inside the window where its probability can exceed the threshold,
instead of as K full-size maps: a 100-megapixel photo with 100 instances needs the instances' areas,
not 10 GB. Inside the window the values are those of the official full-size computation
(aligned_bilinear to the padded input, crop, bilinear resize to the original size); outside it they
provably stay below the threshold, because both resamplings are convex combinations of neighbours.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .detections import Detections
from .layers import aligned_bilinear

# Low-resolution values this far below the threshold still count as "may exceed it" after
# resampling (a convex combination can overshoot its largest input only by float rounding).
_MARGIN = 1e-4


class InstanceMasks:
    """K binary masks of an (H, W) image, each stored as a crop and its offset.

    crops[k] (h_k, w_k) bool tensor, offsets[k] (y0, x0): mask k is `crops[k]` placed at rows
    y0..y0+h_k, columns x0..x0+w_k, False elsewhere. Empty masks have a (0, 0) crop.
    """

    def __init__(self, crops: list[torch.Tensor], offsets: list[tuple[int, int]], image_size: tuple[int, int]):
        self.crops, self.offsets, self.image_size = crops, offsets, (int(image_size[0]), int(image_size[1]))

    def __len__(self) -> int:
        return len(self.crops)

    @classmethod
    def from_dense(cls, masks: torch.Tensor) -> "InstanceMasks":
        """(K, H, W) bool -> crops to each mask's bounding box."""
        crops, offsets = [], []
        for m in masks.bool():
            rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
            if len(rows) == 0:
                crops.append(m[:0, :0])
                offsets.append((0, 0))
                continue
            y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            crops.append(m[y0:y1, x0:x1])
            offsets.append((y0, x0))
        return cls(crops, offsets, tuple(masks.shape[-2:]))

    def select(self, index) -> "InstanceMasks":
        index = torch.as_tensor(index).reshape(-1)
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        keep = [int(i) for i in index]
        return InstanceMasks([self.crops[i] for i in keep], [self.offsets[i] for i in keep], self.image_size)

    def mask(self, k: int) -> torch.Tensor:
        """(H, W) bool mask of instance k."""
        crop, (y0, x0) = self.crops[k], self.offsets[k]
        out = torch.zeros(self.image_size, dtype=torch.bool, device=crop.device)
        out[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return out

    def dense(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(K, H, W) bool: every mask at full size (K*H*W bytes)."""
        if device is None:
            device = self.crops[0].device if self.crops else "cpu"
        out = torch.zeros((len(self), *self.image_size), dtype=torch.bool, device=device)
        for k, (crop, (y0, x0)) in enumerate(zip(self.crops, self.offsets)):
            out[k, y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return out

    def areas(self) -> torch.Tensor:
        return torch.tensor([int(c.sum()) for c in self.crops], dtype=torch.int64)

    def rle(self, k: int) -> dict:
        """COCO compressed RLE {"size": [H, W], "counts": str} of mask k, built from its crop."""
        from pycocotools import mask as mask_utils

        h, w = self.image_size
        crop, (y0, x0) = self.crops[k], self.offsets[k]
        ch, cw = crop.shape
        if ch == 0 or cw == 0:
            counts = [h * w]
        else:
            # Column-major runs of the columns x0..x0+cw (full height), then the empty columns around.
            strip = np.zeros((cw, h), np.uint8)
            strip[:, y0 : y0 + ch] = crop.cpu().numpy().T
            flat = strip.ravel()
            change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
            bounds = np.concatenate([[0], change, [flat.size]])
            counts = np.diff(bounds).tolist()
            if flat[0]:
                counts.insert(0, 0)
            counts[0] += h * x0
            tail = h * (w - x0 - cw)
            if len(counts) % 2:  # ends with a run of zeros
                counts[-1] += tail
            elif tail:
                counts.append(tail)
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        rle["counts"] = rle["counts"].decode("ascii")
        return rle


class ImageResult:
    """Final detections of one image at its original size (H, W), sorted by descending score.

    boxes (K, 4) x1y1x2y2 float; scores (K,); classes (K,) contiguous int64.
    `instance_masks` holds the K masks as crops (memory-aware callers use it: `crops`/`offsets`,
    `rle(k)`, `mask(k)`); `masks` is the (K, H, W) bool view, made on first use.
    `detections` keeps the model-side fields (locations, FPN levels, filters) of the same K rows,
    in input-pixel coordinates. `masks` may be given dense or as `InstanceMasks`.
    """

    def __init__(self, boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                 masks: torch.Tensor | InstanceMasks, detections: Detections | None,
                 image_size: tuple[int, int], input_size: tuple[int, int]):
        self.boxes, self.scores, self.classes, self.detections = boxes, scores, classes, detections
        self.image_size, self.input_size = tuple(image_size), tuple(input_size)
        if isinstance(masks, InstanceMasks):
            self.instance_masks, self._dense = masks, None
        else:
            self.instance_masks, self._dense = InstanceMasks.from_dense(masks), masks
            self.instance_masks.image_size = tuple(masks.shape[-2:])

    @property
    def masks(self) -> torch.Tensor:
        """(K, H, W) bool masks at the original size (materialised once, K*H*W bytes)."""
        if self._dense is None:
            self._dense = self.instance_masks.dense(self.boxes.device)
        return self._dense

    def dense_masks(self, index: torch.Tensor) -> torch.Tensor:
        """(N, H, W) bool masks of the rows `index` (int or bool), without making the others full-size."""
        if self._dense is not None:
            return self._dense[index.to(self._dense.device)]
        return self.instance_masks.select(index).dense(self.boxes.device)

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def __repr__(self) -> str:
        return f"ImageResult({len(self)} instances, image_size={self.image_size})"


def binarize(probs, threshold: float):
    """Mask probabilities (any shape, torch or numpy) -> bool masks: `probs > threshold`, the one rule by
    which a mask probability becomes a mask pixel (the threshold is `cfg.mask_head.mask_threshold`)."""
    return probs > threshold


def rescale_boxes(boxes: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """Scale (K, 4) boxes from input (h, w) to output (H, W) pixels and clip them to the output."""
    (ih, iw), (oh, ow) = input_size, output_size
    boxes = boxes.clone()
    boxes[:, 0::2] *= ow / iw
    boxes[:, 1::2] *= oh / ih
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, ow)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, oh)
    return boxes


def mask_probs_to_image(probs: torch.Tensor, padded_size: tuple[int, int], input_size: tuple[int, int],
                        output_size: tuple[int, int]) -> torch.Tensor:
    """(K, 1, Hp/s, Wp/s) mask probabilities -> (K, H, W) probabilities at the original size.

    aligned_bilinear x s back to the padded input, crop the padding, bilinear (align_corners=False)
    resize to the original image, as the official postprocess does.
    """
    factor = padded_size[0] // probs.shape[-2]
    x = aligned_bilinear(probs, factor)
    x = x[:, :, : input_size[0], : input_size[1]]
    x = F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)
    return x[:, 0]


class _Axis:
    """Source rows (or columns) and weights of a bilinear (align_corners=False) resize along one
    axis, computed as PyTorch's CPU kernel does, so that any window can be resampled on its own."""

    def __init__(self, n_in: int, n_out: int, device: torch.device):
        scale = np.float32(n_in) / np.float32(n_out)
        dst = torch.arange(n_out, dtype=torch.float64, device=device) + 0.5
        real = (float(scale) * dst - 0.5).float().clamp(min=0)  # one rounding, as the kernel's fused multiply-add
        i0 = real.floor().long().clamp(max=n_in - 1)
        self.w1 = (real - i0.float()).clamp(0, 1)
        self.w0 = 1 - self.w1
        self.i0, self.i1 = i0, torch.where(i0 < n_in - 1, i0 + 1, i0)

    def window(self, lo: int, hi: int) -> tuple[int, int]:
        """Outputs whose sources touch inputs lo..hi-1: the range [start, stop)."""
        start = int(torch.searchsorted(self.i1, torch.tensor(lo, device=self.i1.device)))
        stop = int(torch.searchsorted(self.i0, torch.tensor(hi, device=self.i0.device)))
        return start, max(start, stop)


def _lerp(a: torch.Tensor, wa: torch.Tensor, b: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """a*wa + b*wb rounded like the CPU kernel (a fused multiply-add onto the rounded b*wb)."""
    return torch.addcmul(b * wb, a, wa)


def _resample_window(x: torch.Tensor, rows: _Axis, cols: _Axis, ys: tuple[int, int], xs: tuple[int, int]
                     ) -> torch.Tensor:
    """Rows ys[0]..ys[1]-1 and columns xs[0]..xs[1]-1 of the bilinear resize of (h, w) `x`.

    Columns first on the source rows the window reads, then rows: the kernel's own order of
    operations, so the values are bit-identical to the full-size resize.
    """
    i0, i1 = rows.i0[ys[0] : ys[1]], rows.i1[ys[0] : ys[1]]
    j0, j1 = cols.i0[xs[0] : xs[1]], cols.i1[xs[0] : xs[1]]
    r0, c0 = int(i0[0]), int(j0[0])
    src = x[r0 : int(i1[-1]) + 1, c0 : int(j1[-1]) + 1]
    j0, j1 = j0 - c0, j1 - c0
    src_t = src.t().contiguous()  # gathers of whole rows are copies of contiguous memory
    b0, b1 = cols.w0[xs[0] : xs[1], None], cols.w1[xs[0] : xs[1], None]
    across = _lerp(src_t.index_select(0, j0), b0, src_t.index_select(0, j1), b1).t().contiguous()
    top, bottom = across.index_select(0, i0 - r0), across.index_select(0, i1 - r0)
    return _lerp(top, rows.w0[ys[0] : ys[1], None], bottom, rows.w1[ys[0] : ys[1], None])


def _upsampled_span(first: int, last: int, factor: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of `aligned_bilinear(x, factor)` (cropped to `size`) that read low-resolution
    rows first..last: output k reads rows (k - factor//2) // factor and the next one."""
    lo = max(0, factor * (first - 1) + factor // 2)
    hi = min(size, factor * (last + 1) + factor // 2 + 1)
    return lo, max(lo, hi)


def paste_masks(probs: torch.Tensor, padded_size: tuple[int, int], input_size: tuple[int, int],
                output_size: tuple[int, int], threshold: float, chunk: int = 16) -> InstanceMasks:
    """(K, 1, Hp/s, Wp/s) mask probabilities -> K thresholded masks at `output_size`, each computed
    only in the window where it can exceed `threshold` (same values as `mask_probs_to_image` there)."""
    factor = padded_size[0] // probs.shape[-2]
    ih, iw = input_size
    rows, cols = _Axis(ih, output_size[0], probs.device), _Axis(iw, output_size[1], probs.device)
    # Window resampling reproduces the CPU kernel bit for bit when enlarging (the photo case).
    upscale = output_size[0] > ih and output_size[1] > iw and probs.device.type == "cpu"
    crops, offsets = [], []
    for start in range(0, probs.shape[0], chunk):
        low = probs[start : start + chunk].float()
        hot = low[:, 0] > threshold - _MARGIN
        hot_rows, hot_cols = hot.any(2).cpu(), hot.any(1).cpu()
        stage1 = aligned_bilinear(low, factor)[:, 0, :ih, :iw]
        # No larger than the network input: the library kernel on the whole chunk (the reference).
        full = None if upscale else F.interpolate(stage1[:, None], size=output_size, mode="bilinear",
                                                  align_corners=False)[:, 0]
        for k in range(stage1.shape[0]):
            r, c = hot_rows[k].nonzero().squeeze(1), hot_cols[k].nonzero().squeeze(1)
            ys = rows.window(*_upsampled_span(int(r[0]), int(r[-1]), factor, ih)) if len(r) else (0, 0)
            xs = cols.window(*_upsampled_span(int(c[0]), int(c[-1]), factor, iw)) if len(c) else (0, 0)
            if ys[1] <= ys[0] or xs[1] <= xs[0]:
                crops.append(torch.zeros((0, 0), dtype=torch.bool, device=probs.device))
                offsets.append((0, 0))
                continue
            if full is not None:
                values = full[k, ys[0] : ys[1], xs[0] : xs[1]]
            elif 2 * (ys[1] - ys[0]) * (xs[1] - xs[0]) >= output_size[0] * output_size[1]:
                # The window is most of the image: the library kernel on this instance is faster.
                values = F.interpolate(stage1[k][None, None], size=output_size, mode="bilinear",
                                       align_corners=False)[0, 0, ys[0] : ys[1], xs[0] : xs[1]]
            else:
                values = _resample_window(stage1[k], rows, cols, ys, xs)
            mask = binarize(values, threshold)
            mr, mc = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
            if len(mr) == 0:
                crops.append(mask[:0, :0])
                offsets.append((0, 0))
                continue
            r0, r1, c0, c1 = int(mr[0]), int(mr[-1]) + 1, int(mc[0]), int(mc[-1]) + 1
            crops.append(mask[r0:r1, c0:c1].clone())
            offsets.append((ys[0] + r0, xs[0] + c0))
    return InstanceMasks(crops, offsets, output_size)


def postprocess(det: Detections, mask_logits: torch.Tensor, padded_size: tuple[int, int],
                input_size: tuple[int, int], output_size: tuple[int, int], mask_threshold: float = 0.5,
                chunk: int = 16) -> ImageResult:
    """Boxes scaled and clipped to `output_size`, empty boxes dropped, masks pasted per instance
    and thresholded (`paste_masks`; `chunk` instances are upsampled to the padded input at a time)."""
    boxes = rescale_boxes(det.boxes, input_size, output_size)
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = ((wh[:, 0] > 0) & (wh[:, 1] > 0)).nonzero().squeeze(1)
    boxes, det, mask_logits = boxes[keep], det.select(keep), mask_logits[keep]
    masks = paste_masks(mask_logits.float().sigmoid(), padded_size, input_size, output_size, mask_threshold, chunk)
    return ImageResult(boxes=boxes, scores=det.scores, classes=det.classes, masks=masks, detections=det,
                       image_size=tuple(output_size), input_size=tuple(input_size))
