"""What CondInst computes for each instance, for people to look at.

An `Explainer` runs the dense part of the network once for an image and then answers:
  * `instance(k)`: for detection k, its FPN level and location, its generated filters split per
    layer, the relative-coordinate maps it reads, and its mask logits at the mask-head resolution;
  * `at_point(x, y)`: "segment at a point" - the mask that the filters generated at that pixel
    produce, using the level that scores best there (CondInst's own interactive segmentation);
  * `candidates(points)`: the filter sets generated at every cell near some points, on every level,
    run through the dynamic mask head in one batch (click-to-refine chooses among them);
  * `mask_features()`: the mask-branch features every instance reads.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .detections import Detections, cell_detections, fcos_scores
from .dynamic_mask_head import split_params
from .postprocess import ImageResult, binarize, mask_probs_to_image
from .predictor import Predictor


@dataclass
class DetectingLocation:
    """The FPN location an instance comes from (CondInst's and SipMask's explanations start with it):
    `location` in original-image pixels, `location_input` in network-input pixels, its grid cell (row,
    col) on level `fpn_level` (0 = P3), the detection's class, score, class probability and centerness."""

    fpn_level: int
    stride: int
    location: tuple[float, float]
    location_input: tuple[float, float]
    grid_cell: tuple[int, int]
    class_index: int
    score: float
    class_prob: float
    ctrness: float


@dataclass
class InstanceExplanation(DetectingLocation):
    """Everything that produced one mask. Coordinates (x, y) are original-image pixels.

    weights[k] (out_k, in_k) and biases[k] (out_k,) are the generated filters of layer k;
    coord_maps (2, h, w) the (x, y) coordinate channels on the mask-feature grid (stride 8);
    mask_logits (h4, w4) at the mask-head output stride (4), cropped to the image (no padding).
    """

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    coord_maps: np.ndarray
    mask_logits: np.ndarray

    @property
    def mask_probs(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(self.mask_logits, -60.0, 60.0)))


@dataclass
class PointSegmentation:
    """Result of segmenting at a clicked pixel; mask (H, W) bool at the original size."""

    mask: np.ndarray
    probs: np.ndarray
    explanation: InstanceExplanation


@dataclass
class CandidateMasks:
    """Masks of N candidate filter sets near some points.

    detections: N cell detections (level, location, params, best class and its score);
    probs (N, Hp/4, Wp/4): mask probabilities at the mask-head output stride (`stride`, 4) on the
    padded resized input (row 0, col 0 at its top left); `scale` (sy, sx) maps original pixels to
    resized-input pixels.
    """

    detections: Detections
    probs: torch.Tensor
    stride: int
    scale: tuple[float, float]


class Explainer:
    """Caches one image's dense outputs; cheap per-instance and per-point queries afterwards."""

    def __init__(self, predictor: Predictor, image: np.ndarray):
        self.predictor = predictor
        self.model = predictor.model
        self.cfg = predictor.cfg
        self.image_size = tuple(image.shape[:2])
        self.outputs, batch, self.input_size = predictor.heads(image)
        self.padded_size = tuple(batch.shape[-2:])
        self._result: ImageResult | None = None

    # ---- whole-image views ---------------------------------------------------------------------
    def result(self) -> ImageResult:
        """The same detections as `predictor(image)` (computed from the cached outputs)."""
        if self._result is None:
            self._result = self.predictor.results(self.outputs, self.padded_size, [self.input_size],
                                                  [self.image_size])[0]
        return self._result

    def mask_features(self) -> np.ndarray:
        """(C_mask, h, w) mask-branch features at stride 8, cropped to the image."""
        h, w = self._grid_extent(self.model.mask_branch.out_stride)
        return self.outputs.mask_feats[0, :, :h, :w].float().cpu().numpy()

    # ---- per instance ----------------------------------------------------------------------------
    def instance(self, k: int) -> InstanceExplanation:
        """Explanation of detection k of `result()`."""
        det = self.result().detections
        if not 0 <= k < len(det):
            raise IndexError(f"instance {k} out of range (0..{len(det) - 1})")
        return self._explain(det.select(torch.tensor([k])))

    def at_point(self, x: float, y: float, class_index: int | None = None) -> PointSegmentation:
        """Segment whatever the filters generated at original-image pixel (x, y) produce.

        On every level the cell containing the point is scored as detections are (of `class_index`,
        or of the best class); the best level's controller output becomes the dynamic filters.
        """
        h0, w0 = self.image_size
        if not (0 <= x < w0 and 0 <= y < h0):
            raise ValueError(f"point ({x}, {y}) is outside the {w0}x{h0} image")
        sy, sx = self.input_size[0] / h0, self.input_size[1] / w0
        xi, yi = x * sx, y * sy
        best = None
        for level, stride in enumerate(self.cfg.fcos.strides):
            cls = self.outputs.cls_logits[level][0]
            hl, wl = cls.shape[-2:]
            i, j = min(int(yi // stride), hl - 1), min(int(xi // stride), wl - 1)
            _, scores = fcos_scores(cls[:, i, j].float().sigmoid(),
                                    self.outputs.ctrness[level][0, 0, i, j].float().sigmoid(), self.cfg.fcos)
            c = int(scores.argmax()) if class_index is None else class_index
            score = float(scores[c])
            if best is None or score > best[0]:
                best = (score, level, i, j, c)
        _, level, i, j, c = best
        det = self._cell_detection(level, i, j, c)
        explanation = self._explain(det)
        with torch.no_grad():
            logits = self.model.mask_logits(self.outputs.mask_feats, det)
            probs = mask_probs_to_image(logits.float().sigmoid(), self.padded_size, self.input_size, self.image_size)
        probs = probs[0].cpu().numpy()
        return PointSegmentation(mask=binarize(probs, self.cfg.mask_head.mask_threshold), probs=probs,
                                 explanation=explanation)

    def candidates(self, points, radius: int = 2) -> CandidateMasks:
        """Filter sets of every cell within `radius` cells of any point (x, y in original pixels), on
        every FPN level, each scored for its best class, through the dynamic mask head in one batch."""
        h0, w0 = self.image_size
        sy, sx = self.input_size[0] / h0, self.input_size[1] / w0
        parts = []
        for level, stride in enumerate(self.cfg.fcos.strides):
            cls = self.outputs.cls_logits[level][0]
            hl, wl = cls.shape[-2:]
            cells = set()
            for x, y in points:
                i, j = min(int(y * sy // stride), hl - 1), min(int(x * sx // stride), wl - 1)
                cells.update((a, b) for a in range(max(i - radius, 0), min(i + radius + 1, hl))
                             for b in range(max(j - radius, 0), min(j + radius + 1, wl)))
            if not cells:
                continue
            device = cls.device
            flat = torch.tensor(sorted(a * wl + b for a, b in cells), device=device)
            _, scores = fcos_scores(cls.reshape(cls.shape[0], -1)[:, flat].T.float().sigmoid(),
                                    self.outputs.ctrness[level][0, 0].reshape(-1)[flat].float().sigmoid(),
                                    self.cfg.fcos)
            out = self.outputs
            parts.append(cell_detections(out.cls_logits[level][0], out.bbox_reg[level][0], out.ctrness[level][0],
                                         out.params[level][0], out.locations[level], stride, level, flat,
                                         scores.argmax(dim=1), self.cfg.fcos))
        det = Detections.cat(parts)
        with torch.no_grad():
            probs = self.model.mask_logits(self.outputs.mask_feats, det)[:, 0].float().sigmoid()
        return CandidateMasks(det, probs, self.model.mask_head.mask_out_stride, (sy, sx))

    def candidate_to_image(self, probs: torch.Tensor) -> np.ndarray:
        """(Hp/4, Wp/4) probabilities of `candidates` -> (H, W) probabilities at the original size."""
        with torch.no_grad():
            return mask_probs_to_image(probs[None, None], self.padded_size, self.input_size,
                                       self.image_size)[0].cpu().numpy()

    # ---- internals -------------------------------------------------------------------------------
    def _grid_extent(self, stride: int) -> tuple[int, int]:
        """Rows/cols of a stride-`stride` map that cover the (unpadded) resized image."""
        h, w = self.input_size
        return -(-h // stride), -(-w // stride)

    def _cell_detection(self, level: int, i: int, j: int, class_index: int) -> Detections:
        out = self.outputs
        wl, device = out.cls_logits[level].shape[-1], out.params[level].device
        return cell_detections(out.cls_logits[level][0], out.bbox_reg[level][0], out.ctrness[level][0],
                               out.params[level][0], out.locations[level], self.cfg.fcos.strides[level], level,
                               torch.tensor([i * wl + j], device=device), torch.tensor([class_index], device=device),
                               self.cfg.fcos)

    def _explain(self, det: Detections) -> InstanceExplanation:
        level = int(det.fpn_levels[0])
        stride = self.cfg.fcos.strides[level]
        wl = self.outputs.cls_logits[level].shape[-1]
        flat = int(det.grid_index[0])
        i, j = divmod(flat, wl)
        c = int(det.classes[0])
        head = self.model.mask_head
        p = split_params(det.params.float(), head.in_channels, head.channels, head.num_layers)
        mh, mw = self._grid_extent(self.model.mask_branch.out_stride)
        feats = self.outputs.mask_feats
        with torch.no_grad():
            if head.coords == "none":
                coords = torch.zeros((1, 2, feats.shape[-2], feats.shape[-1]))
            else:
                coords = head.coordinate_maps(det.locations.float(), det.fpn_levels, feats.shape[-2], feats.shape[-1],
                                              self.model.mask_branch.out_stride)
            logits = self.model.mask_logits(feats, det)[0, 0]
        oh, ow = -(-self.input_size[0] // head.mask_out_stride), -(-self.input_size[1] // head.mask_out_stride)
        lx, ly = float(det.locations[0, 0]), float(det.locations[0, 1])
        scale_x, scale_y = self.image_size[1] / self.input_size[1], self.image_size[0] / self.input_size[0]
        return InstanceExplanation(
            fpn_level=level, stride=stride, location=(lx * scale_x, ly * scale_y), location_input=(lx, ly),
            grid_cell=(i, j), class_index=c, score=float(det.scores[0]),
            class_prob=float(self.outputs.cls_logits[level][0, c, i, j].sigmoid()),
            ctrness=float(self.outputs.ctrness[level][0, 0, i, j].sigmoid()),
            weights=[w[0].cpu().numpy() for w in p.weights], biases=[b[0].cpu().numpy() for b in p.biases],
            coord_maps=coords[0, :, :mh, :mw].cpu().numpy(), mask_logits=logits[:oh, :ow].float().cpu().numpy(),
        )
