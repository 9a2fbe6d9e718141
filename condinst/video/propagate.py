"""Carry a person's mask of one frame to the next frames with CondInst's own dynamic filters.

    out = propagate(predictor, frame_t, person_mask, open_video("clip.mp4").frames(from t+1), num_frames=10)
    out.filters.iou          # how well the chosen filters reproduce the person's mask on frame t
    for p in out.frames:     # p.offset = 1, 2, ...: the frames after t, in order
        p.mask, p.confidence
    out.stopped              # None, or why propagation stopped before num_frames (instance lost)

1. Fit (frame t): the controller generated a filter set at every FCOS location. Every location in
   or next to the person's mask, on every FPN level, runs through the dynamic mask head in one batch
   (`Explainer.candidates`, click-to-refine's path); the filter set whose mask has the highest IoU
   with the person's mask is kept, with the location it was generated at.
2. Follow (each next frame, features from `segment_frames`, the `video` command's path): the kept
   filters are applied to the frame's mask features re-centred at candidate locations around the
   predicted one (previous location + centroid velocity of the previous masks; +-3 cells of 8 input
   pixels each way), all candidates in one dynamic-head call on the stride-8 grid. The first frame's
   motion is not known: an instance moving more than 3 cells there is lost (a stop, not a wrong mask;
   a search of +-6 cells found it, but on the test videos also let a small object's filters settle
   on a sliver of its mask moved out of the frame). Each candidate is scored by its agreement with the
   previous mask moved by the candidate's own displacement (mask IoU): filters re-centred where the
   object went reproduce its shape there, elsewhere they miss part of it. The best one gives the
   frame's mask (upsampled and pasted at the frame size as every CondInst mask) and its agreement
   is the frame's confidence.
3. Stop: when the mask is empty or shrinks below `min_area_fraction` of the person's mask, or its
   agreement falls below `min_agreement` (the instance left or was lost), that frame and the rest
   are not returned and `stopped` says why.

The filters are those the network generated (not re-trained): the propagated masks are what CondInst
itself segments with the instance's filters, so a slightly wrong correction is not copied as is.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..detections import Detections
from ..errors import UserError
from ..explain import Explainer
from ..layers import aligned_bilinear
from ..postprocess import binarize, mask_probs_to_image
from ..predictor import Predictor
from .segmenter import Frame, segment_frames
from .tracker import pairwise_mask_iou


class PropagationError(UserError, ValueError):
    """A mask or frames that cannot be propagated (empty mask, size mismatch, ...), in one line."""


@dataclass
class PropagationConfig:
    search_cells: int = 3  # candidate centres: predicted location +- this many stride-8 cells each way
    max_points: int = 48  # points of the person's mask whose nearby locations are tried as filters
    min_area_fraction: float = 0.1  # stop below this fraction of the person's mask area
    min_agreement: float = 0.55  # stop when the mask agrees less than this with the moved previous one


@dataclass
class FittedFilters:
    """The filter set kept on frame t: a one-row `Detections` (params (1, P), location (1, 2) in
    input pixels, fpn_levels, class, score) and the IoU of its mask with the person's mask."""

    detection: Detections
    iou: float


@dataclass
class PropagatedFrame:
    """offset: frames after t (1 = the next one); mask (H, W) bool at the frame's size; confidence:
    IoU of the mask with the previous frame's mask moved by the found motion; location (x, y) of
    the filters in input pixels."""

    offset: int
    mask: np.ndarray
    confidence: float
    location: tuple[float, float]


@dataclass
class Propagation:
    filters: FittedFilters
    frames: list[PropagatedFrame]
    stopped: str | None  # why fewer frames than asked were returned, None otherwise


def check_mask(mask: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The person's (H, W) mask as bool; one-line `PropagationError` unless it fits the (H, W, 3) frame."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise PropagationError(f"the mask must be one (height, width) array, got shape {tuple(mask.shape)}")
    if mask.shape != tuple(image.shape[:2]):
        raise PropagationError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the frame is "
                               f"{image.shape[1]}x{image.shape[0]} (width x height)")
    mask = mask.astype(bool)
    if not mask.any():
        raise PropagationError("the mask is empty: draw or select the instance on this frame first")
    return mask


def propagate(predictor: Predictor, image: np.ndarray, mask: np.ndarray, frames: Iterable[np.ndarray],
              num_frames: int, config: PropagationConfig | None = None, batch_size: int = 4) -> Propagation:
    """Propagate `mask` (H, W) of `image` (H, W, 3) RGB uint8 over up to `num_frames` of `frames`
    (the frames after it, (H, W, 3) each, read as needed). Needs the PyTorch model."""
    config = config or PropagationConfig()
    if not isinstance(num_frames, int) or num_frames < 1:
        raise PropagationError(f"the number of frames to propagate must be a positive integer, got {num_frames!r}")
    mask = check_mask(mask, image)
    sized = _same_size(itertools.islice(frames, num_frames), image.shape[:2])
    first = next(sized, None)  # the first frame is checked before the model runs
    explainer = Explainer(predictor, image)
    fitted = fit_filters(explainer, mask, config)
    if first is None:
        return Propagation(fitted, [], "no frames follow the corrected one")
    follower = Follower(predictor, fitted, explainer, mask, config)
    out: list[PropagatedFrame] = []
    for frame in segment_frames(predictor, itertools.chain([first], sized), batch_size, keep_features=True):
        step = follower.step(frame)
        if isinstance(step, str):
            return Propagation(fitted, out, step)
        out.append(step)
    return Propagation(fitted, out, None)


def _same_size(frames: Iterable[np.ndarray], size: tuple[int, int]) -> Iterator[np.ndarray]:
    for k, frame in enumerate(frames, 1):
        if tuple(frame.shape[:2]) != tuple(size):
            raise PropagationError(f"frame {k} after the corrected one is {frame.shape[1]}x{frame.shape[0]}, "
                                   f"the corrected frame {size[1]}x{size[0]}: frames of a sequence share one size")
        yield frame


# ---- 1. fit: the controller's filter set that best reproduces the person's mask ----------------------

@torch.no_grad()
def fit_filters(explainer: Explainer, mask: np.ndarray, config: PropagationConfig) -> FittedFilters:
    """The candidate filter set (locations in or next to `mask`, every level) with the best mask IoU."""
    cands = explainer.candidates(mask_points(mask, config.max_points), radius=1)
    threshold = explainer.cfg.mask_head.mask_threshold
    target = grid_mask(mask, cands.scale, cands.stride, tuple(cands.probs.shape[1:])) > 0.5
    iou = pairwise_mask_iou(binarize(cands.probs, threshold).flatten(1), target.reshape(1, -1))[:, 0]
    best = int(iou.argmax())
    return FittedFilters(cands.detections.select(torch.tensor([best])), float(iou[best]))


def mask_points(mask: np.ndarray, max_points: int) -> list[tuple[float, float]]:
    """Up to about `max_points` (x, y) pixels of `mask` on a regular grid (its centroid always among them)."""
    ys, xs = np.nonzero(mask)
    step = max(1, int(math.sqrt(len(ys) / max_points)))
    keep = (ys % step == 0) & (xs % step == 0)
    points = [(float(x), float(y)) for x, y in zip(xs[keep], ys[keep])]
    cy, cx = ys.mean(), xs.mean()
    nearest = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))  # the pixel of the mask nearest its centroid
    return points + [(float(xs[nearest]), float(ys[nearest]))]


def grid_mask(mask: np.ndarray, scale: tuple[float, float], stride: int, shape: tuple[int, int]) -> torch.Tensor:
    """(H, W) bool original-pixel mask -> (h, w) area fractions on a stride-`stride` grid of the
    padded input (`shape`), `scale` (sy, sx) from original to input pixels; 0 on the padding."""
    oh = min(int(math.ceil(mask.shape[0] * scale[0] / stride)), shape[0])
    ow = min(int(math.ceil(mask.shape[1] * scale[1] / stride)), shape[1])
    out = torch.zeros(shape)
    out[:oh, :ow] = torch.from_numpy(cv2.resize(mask.astype(np.float32), (ow, oh), interpolation=cv2.INTER_AREA))
    return out


# ---- 2. follow: the filters re-centred where the instance went ------------------------------------------

class Follower:
    """The kept filters, frame after frame: `step(frame)` -> PropagatedFrame, or the reason to stop."""

    def __init__(self, predictor: Predictor, fitted: FittedFilters, explainer: Explainer, mask: np.ndarray,
                 config: PropagationConfig):
        self.model, self.config = predictor.model, config
        self.det = fitted.detection
        self.stride = self.model.mask_branch.out_stride
        self.input_size, self.padded_size = explainer.input_size, explainer.padded_size
        self.image_size = tuple(mask.shape)
        h, w = -(-self.padded_size[0] // self.stride), -(-self.padded_size[1] // self.stride)
        sy, sx = self.input_size[0] / mask.shape[0], self.input_size[1] / mask.shape[1]
        self.prev = grid_mask(mask, (sy, sx), self.stride, (h, w)) > 0.5  # (h, w) on the stride-8 grid
        self.first_area = max(float(self.prev.sum()), 1.0)
        self.location = self.det.locations[0].float()  # (2,) input pixels
        self.centroid = centroid(self.prev, self.stride)
        self.velocity = torch.zeros(2)
        threshold = predictor.cfg.mask_head.mask_threshold
        self.threshold = threshold
        self.logit_threshold = math.log(threshold / (1 - threshold))
        self.offset = 0

    @torch.no_grad()
    def step(self, frame: Frame) -> PropagatedFrame | str:
        self.offset += 1
        centres = candidate_centres(self.location + self.velocity, self.location, self.config.search_cells,
                                    self.stride)
        logits = self.logits(frame.mask_feats, centres)  # (K, h, w)
        masks = logits > self.logit_threshold
        agree = agreement(masks, self.prev, (centres - self.location) / self.stride)
        best = int(agree.argmax())
        area = float(masks[best].sum())
        if area == 0:
            return f"lost at frame +{self.offset}: the filters segment nothing there"
        if area < self.config.min_area_fraction * self.first_area:
            return (f"lost at frame +{self.offset}: the mask shrank to {area / self.first_area:.0%} of the "
                    "corrected one")
        if float(agree[best]) < self.config.min_agreement:
            return (f"lost at frame +{self.offset}: the mask agrees only {float(agree[best]):.2f} "
                    "(IoU) with the previous frame's")
        now = centroid(masks[best], self.stride)
        self.velocity, self.centroid = now - self.centroid, now
        self.location, self.prev = centres[best], masks[best]
        full = self.to_image(logits[best])
        return PropagatedFrame(self.offset, full, float(agree[best]), tuple(float(v) for v in self.location))

    def logits(self, mask_feats: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """(K, h, w) mask logits of the kept filters at K centres, on the frame's stride-8 grid."""
        k = len(centres)
        device = mask_feats.device
        out = self.model.mask_head.mask_logits(
            mask_feats.float(), self.stride, centres.to(device), self.det.fpn_levels.expand(k).to(device),
            torch.zeros(k, dtype=torch.long, device=device), self.det.params.float().expand(k, -1).to(device),
            upsample=False)
        return out[:, 0].cpu()

    def to_image(self, logits: torch.Tensor) -> np.ndarray:
        """(h, w) stride-8 logits -> (H, W) bool mask at the frame size (CondInst's upsampling and paste)."""
        head = self.model.mask_head
        up = aligned_bilinear(logits[None, None], self.stride // head.mask_out_stride).sigmoid()
        probs = mask_probs_to_image(up, self.padded_size, self.input_size, self.image_size)
        return (probs[0] > self.threshold).numpy()


def candidate_centres(predicted: torch.Tensor, previous: torch.Tensor, cells: int, stride: int) -> torch.Tensor:
    """(K, 2) (x, y): a (2 cells + 1)^2 grid of stride-spaced centres around `predicted`, and `previous`."""
    steps = torch.arange(-cells, cells + 1, dtype=torch.float32) * stride
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    grid = predicted[None] + torch.stack([dx.reshape(-1), dy.reshape(-1)], dim=1)
    return torch.cat([grid, previous[None]])


def agreement(masks: torch.Tensor, prev: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """(K,) IoU of each (K, h, w) mask with the (h, w) previous mask moved by its (K, 2) (dx, dy) shift
    in cells (bilinear, then >= 0.5; what moves out of the grid is dropped)."""
    k, h, w = masks.shape
    theta = torch.zeros(k, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * shifts[:, 0] / w  # affine_grid samples the input at output - shift
    theta[:, 1, 2] = -2 * shifts[:, 1] / h
    grid = F.affine_grid(theta, (k, 1, h, w), align_corners=False)
    moved = (F.grid_sample(prev.float()[None, None].expand(k, 1, h, w), grid, align_corners=False) >= 0.5)[:, 0]
    inter = (masks & moved).flatten(1).sum(1).float()
    union = (masks | moved).flatten(1).sum(1).float()
    return inter / union.clamp(min=1)


def centroid(mask: torch.Tensor, stride: int) -> torch.Tensor:
    """(2,) (x, y) input-pixel centroid of an (h, w) stride-`stride` grid mask (cell centres)."""
    ys, xs = mask.nonzero(as_tuple=True)
    if len(ys) == 0:
        return torch.zeros(2)
    return torch.stack([xs.float().mean(), ys.float().mean()]) * stride + stride // 2
