"""What SipMask computes for each instance, for people to look at (CondInst's is `condinst.explain`).

A SipMask instance's mask is assembled, not generated: the location that detected it predicts 4 sets of
M = 32 coefficients (one per quadrant of its box: top-left, top-right, bottom-left, bottom-right); each
set combines the image's M basis masks (stride 2) linearly, and the crop-split keeps, at every pixel of
the box, the combination of the quadrant the pixel lies in (split at the kernel's (x2 - x1 + 0.1) / 2):

    partial_q  = (coefficients_q . bases) on the pixels of quadrant q, 0 elsewhere    (4, h, w)
    logits     = sum_q partial_q                                                        (h, w), box only
    probs      = sigmoid(logits) inside the box, 0 outside     -> resized to the image, > 0.4 = mask

`SipMaskExplainer` runs the network once for an image and answers `instance(k)` (detection k of
`result()`) and `at_point(x, y)` (what the location at a pixel assembles); `mask_features()` are the bases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..explain import DetectingLocation, Explainer, PointSegmentation
from ..postprocess import InstanceMasks
from .crop_split import quadrant_index
from .postprocess import paste_masks, resize_factor, threshold_resized

QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def quadrant_logits(basis: torch.Tensor, cofs: torch.Tensor) -> torch.Tensor:
    """basis (M, Hm, Wm), cofs (N, 4*M) -> (N, 4, Hm, Wm): each quadrant's linear combination of the bases
    (the product `postprocess.paste_masks` takes the sigmoid of)."""
    m, hm, wm = basis.shape
    return (cofs.float().reshape(-1, 4, m) @ basis.reshape(m, -1)).reshape(len(cofs), 4, hm, wm)


@dataclass
class SipMaskInstanceExplanation(DetectingLocation):
    """Everything that assembled one mask. `location` and `box` are in original-image pixels; the maps are
    on the basis grid (stride `mask_stride` = 2 of the network input, cropped to the image, no padding).

    coefficients (4, M): the quadrants' coefficient sets (rows in `QUADRANTS` order);
    mask_box (4,) x1 y1 x2 y2 and split (x, y), the quadrant split point, on the basis grid, as the kernel
    reads them (`split_image`: the split point in original pixels); quadrant_logits (4, h, w) each set's
    combination over the whole grid; partials (4, h, w) the same kept on their own quadrant of the box only;
    inside (h, w) the box.
    """

    box: tuple[float, float, float, float]
    mask_box: np.ndarray
    split: tuple[float, float]
    split_image: tuple[float, float]
    coefficients: np.ndarray
    quadrant_logits: np.ndarray
    partials: np.ndarray
    inside: np.ndarray
    quadrant: np.ndarray
    threshold: float
    mask_stride: int = 2

    @property
    def mask_logits(self) -> np.ndarray:
        """(h, w) the assembled logits: the sum of the four partials (0 outside the box)."""
        return self.partials.sum(axis=0)

    @property
    def mask_probs(self) -> np.ndarray:
        """(h, w) sigmoid of the assembled logits inside the box, 0 outside (the crop-split's output)."""
        probs = 1.0 / (1.0 + np.exp(-np.clip(self.mask_logits, -60.0, 60.0)))
        return np.where(self.inside, probs, 0.0).astype(np.float32)


class SipMaskExplainer(Explainer):
    """Caches one image's dense SipMask outputs (`Explainer`'s constructor and `result()`); cheap
    per-instance and per-point queries afterwards."""

    def mask_features(self) -> np.ndarray:
        """(M, h, w) the basis masks at stride 2, cropped to the image."""
        h, w = self._grid_extent(2)
        return self.outputs.basis[0, :, :h, :w].float().cpu().numpy()

    def instance(self, k: int) -> SipMaskInstanceExplanation:
        """Explanation of detection k of `result()`."""
        result = self.result()
        if not 0 <= k < len(result):
            raise IndexError(f"instance {k} out of range (0..{len(result) - 1})")
        det = result.detections
        return self._explain(int(det.fpn_levels[k]), int(det.grid_index[k]), int(det.classes[k]),
                             result.boxes[k], float(result.scores[k]))

    def at_point(self, x: float, y: float, class_index: int | None = None) -> PointSegmentation:
        """What the location at original-image pixel (x, y) assembles: on every level the cell containing
        the point is scored as detections are (class x centerness, of `class_index` or of the best class);
        the best level's box and coefficients make the mask."""
        h0, w0 = self.image_size
        if not (0 <= x < w0 and 0 <= y < h0):
            raise ValueError(f"point ({x}, {y}) is outside the {w0}x{h0} image")
        (ih, iw), out = self.input_size, self.outputs
        xi, yi = x * iw / w0, y * ih / h0
        best = None
        for level, stride in enumerate(self.cfg.fcos.strides):
            hl, wl = out.cls_logits[level].shape[-2:]
            i, j = min(int(yi // stride), hl - 1), min(int(xi // stride), wl - 1)
            ctr = out.ctrness[level][0, 0, i, j].float().sigmoid()
            scores = out.cls_logits[level][0, :, i, j].float().sigmoid() * ctr
            c = int(scores.argmax()) if class_index is None else class_index
            if best is None or float(scores[c]) > best[0]:
                best = (float(scores[c]), level, i * wl + j, c)
        score, level, flat, c = best
        wl = out.cls_logits[level].shape[-1]
        loc = out.locations[level][flat].float()
        d = out.bbox_reg[level][0, :, flat // wl, flat % wl].float()
        box = torch.stack([(loc[0] - d[0]).clamp(0, iw - 1), (loc[1] - d[1]).clamp(0, ih - 1),
                           (loc[0] + d[2]).clamp(0, iw - 1), (loc[1] + d[3]).clamp(0, ih - 1)])
        box = box / box.new_tensor(self._factor())  # original pixels, as `to_image_result` divides them
        explanation = self._explain(level, flat, c, box, score)
        with torch.no_grad():
            masks, _ = paste_masks(self.outputs.basis[0].float(), out.cofs[level][0, :, flat // wl, flat % wl][None],
                                   box[None], self._factor(), self.image_size, self.cfg.sipmask.mask_threshold)
        mask = masks.mask(0).cpu().numpy()
        return PointSegmentation(mask=mask, probs=mask.astype(np.float32), explanation=explanation)

    def candidates(self, points, radius: int = 2):
        raise UserError("click-to-refine chooses among CondInst's dynamic filters; a SipMask model has none "
                        "(use 'Add at point' or the editing tools)")

    def assemble(self, partials: np.ndarray, mask_box: np.ndarray) -> np.ndarray:
        """The final (H, W) bool mask from quadrant partials (4, h, w) as the model pastes it: sigmoid of their
        sum inside `mask_box` (0 outside), resized to the original image with torch 1.1 semantics, > threshold."""
        hm, wm = self.outputs.basis.shape[-2:]
        logits = torch.zeros((hm, wm))
        logits[: partials.shape[1], : partials.shape[2]] = torch.from_numpy(partials).float().sum(0)
        _, inside = quadrant_index(torch.as_tensor(mask_box)[None], hm, wm)
        probs = torch.sigmoid(logits) * inside[0].float()
        masks: InstanceMasks = threshold_resized(probs[None], self._paste_size(), self.image_size,
                                                 self.cfg.sipmask.mask_threshold)
        return masks.mask(0).cpu().numpy()

    # ---- internals -------------------------------------------------------------------------------
    def _factor(self):
        return resize_factor(self.input_size, self.image_size, self.cfg.input.resize, self.cfg.input)

    def _paste_size(self) -> tuple[int, int]:
        """(h, w) the basis grid is resized to before the top-left crop (`paste_masks`: torch 1.1 floor)."""
        factor = self._factor()
        sy, sx = (2 / factor[3], 2 / factor[2]) if isinstance(factor, np.ndarray) else (2 / factor, 2 / factor)
        hm, wm = self.outputs.basis.shape[-2:]
        return int(math.floor(float(hm) * float(sy))), int(math.floor(float(wm) * float(sx)))

    def _explain(self, level: int, flat: int, c: int, box: torch.Tensor, score: float) -> SipMaskInstanceExplanation:
        """The explanation of the location `flat` of `level`, class c, with its `box` in original pixels."""
        out = self.outputs
        wl = out.cls_logits[level].shape[-1]
        i, j = divmod(flat, wl)
        basis = out.basis[0].float()
        cofs = out.cofs[level][0, :, i, j].float()
        mask_box = box.float() * box.new_tensor(self._factor()).float() / 2  # as `paste_masks` scales it
        hm, wm = basis.shape[-2:]
        with torch.no_grad():
            q = quadrant_logits(basis, cofs[None])[0]
            index, inside = quadrant_index(mask_box[None], hm, wm)
        partials = torch.stack([torch.where(inside[0] & (index[0] == k), q[k], torch.zeros(())) for k in range(4)])
        h, w = self._grid_extent(2)
        x1, y1, x2, y2 = (float(v) for v in mask_box)
        roi_w = float(np.float32((np.float64(x2) - np.float64(x1) + 0.1) / 2))
        roi_h = float(np.float32((np.float64(y2) - np.float64(y1) + 0.1) / 2))
        lx, ly = (float(v) for v in out.locations[level][flat])
        (h0, w0), (ih, iw) = self.image_size, self.input_size
        fx, fy = (float(v) for v in np.broadcast_to(self._factor(), (4,))[:2])
        return SipMaskInstanceExplanation(
            fpn_level=level, stride=self.cfg.fcos.strides[level], location=(lx * w0 / iw, ly * h0 / ih),
            location_input=(lx, ly), grid_cell=(i, j), class_index=c, score=score,
            class_prob=float(out.cls_logits[level][0, c, i, j].float().sigmoid()),
            ctrness=float(out.ctrness[level][0, 0, i, j].float().sigmoid()),
            box=tuple(float(v) for v in box), mask_box=mask_box.cpu().numpy(), split=(x1 + roi_w, y1 + roi_h),
            split_image=(2 * (x1 + roi_w) / fx, 2 * (y1 + roi_h) / fy),
            coefficients=cofs.reshape(4, -1).cpu().numpy(), quadrant_logits=q[:, :h, :w].cpu().numpy(),
            partials=partials[:, :h, :w].cpu().numpy(), inside=inside[0, :h, :w].cpu().numpy(),
            quadrant=index[0, :h, :w].to(torch.int8).cpu().numpy(),
            threshold=float(self.cfg.sipmask.mask_threshold))
