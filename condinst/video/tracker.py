"""CondInst's own online tracker: a track keeps the dynamic filters of its last detection and
re-applies them, re-centred at its predicted location, to each new frame's mask features.

An instance's generated filters segment that instance wherever its relative coordinates point
(CrossVIS trains this "crossover" explicitly; the per-frame model already does it well enough for
linking). For every live track and every new detection, on the frame's mask features:

    track mask  = dynamic head(track filters, location = last location + velocity x frames since seen)
    detection mask = dynamic head(detection filters, its own location)
    match score = log(mask IoU) + score_weight x log(detection score) + box_weight x IoU(predicted box, box)
                  + class_weight x [same class]

which is SipMask-VIS's matching score (log-softmax of embedding similarity + log score + 2 box IoU +
10 same class) with the mask IoU of the track's own filters in place of the embedding similarity.
Pairs below `min_mask_iou` (`cross_class_iou` between classes: a flickering class is tolerated
on the same object, not a jump to another one) never match; the rest are assigned greedily, best
score first. A track without a detection is kept `max_lost` frames (its location and box move on
with its velocity), and its filters and velocity change only when it is matched. An unmatched detection
starts a track when it scores at least `new_track_score` and at most
`covered_fraction` of its mask lies on the instances already tracked in the frame (else it is a
duplicate, or a detection of several objects merged, as when two objects cross).

All masks come from one batched dynamic-head call per frame on the stride-8 mask-feature grid:
the tracking cost is a few small matrix products (see bench/video.py for the overhead).

A SipMask model tracks the same way with its own appearance (`sipmask_masks`): a track keeps its
detection's 4 x 32 coefficients and box, and re-assembles its mask from the new frame's basis masks,
crop-split at its box moved on by its velocity. The model's type chooses the function (`appearance`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from ..model import CondInst
from ..sipmask.crop_split import quadrant_index
from ..sipmask.explain import quadrant_logits
from .segmenter import Frame


@dataclass
class TrackerConfig:
    min_score: float = 0.1  # detections scoring less are ignored (neither matched nor output)
    new_track_score: float = 0.3  # an unmatched detection starts a track from this score
    min_mask_iou: float = 0.1  # a track and a detection can match only from this mask IoU
    cross_class_iou: float = 0.7  # ... and from this one when their classes differ
    covered_fraction: float = 0.5  # an unmatched detection this much covered by tracked ones starts nothing
    max_lost: int = 10  # frames a track is kept without a detection
    score_weight: float = 1.0  # SipMask-VIS weights
    box_weight: float = 2.0
    class_weight: float = 10.0
    velocity_momentum: float = 0.5  # weight of the previous velocity in its running average


@dataclass
class Track:
    """A live track, in network-input pixel coordinates (frames of a video share one input size).

    params (P,) filters (SipMask: 4 x 32 coefficients) of its last detection; location (2,) where they
    were generated; box (4,) x1y1x2y2; velocity (2,) box-centre motion per frame; class_scores: summed
    score per class."""

    id: int
    params: torch.Tensor
    fpn_level: int
    location: torch.Tensor
    box: torch.Tensor
    last_frame: int
    velocity: torch.Tensor
    class_scores: dict[int, float] = field(default_factory=dict)

    @property
    def class_index(self) -> int:
        return max(self.class_scores, key=self.class_scores.get)


class CondInstTracker:
    """Links a video's detections online: `update(frame)` -> [(track id, detection row)] for the
    rows of `frame.result` that belong to a track (ids count from 1 in order of appearance).
    `model`: a CondInst, or a SipMask (tracked with its coefficients, see `appearance`)."""

    def __init__(self, model: CondInst, config: TrackerConfig | None = None):
        self.model = model
        self.appearance = appearance(model)
        self.config = config or TrackerConfig()
        self.tracks: list[Track] = []
        self.next_id = 1
        threshold = model.cfg.mask_head.mask_threshold
        self.logit_threshold = math.log(threshold / (1 - threshold))

    @torch.no_grad()
    def update(self, frame: Frame) -> list[tuple[int, int]]:
        if frame.mask_feats is None:
            raise ValueError("the CondInst tracker needs the frame's mask features (a PyTorch model)")
        cfg = self.config
        det = frame.result.detections
        rows = (frame.result.scores >= cfg.min_score).nonzero().squeeze(1)
        det = det.select(rows)
        self.tracks = [t for t in self.tracks if frame.index - t.last_frame <= cfg.max_lost]
        track_masks, det_masks = self.masks(frame, det)
        mask_iou = pairwise_mask_iou(track_masks, det_masks)
        score, same_class = self.match_scores(frame.index, det, mask_iou)
        allowed = (mask_iou >= cfg.min_mask_iou) & (same_class | (mask_iou >= cfg.cross_class_iou))
        pairs = greedy_assignment(score, allowed)
        out = []
        for t, k in pairs:
            self._follow(self.tracks[t], det, k, frame.index)
            out.append((self.tracks[t].id, int(rows[k])))
        taken = {k for _, k in pairs}
        covered = det_masks[[k for _, k in pairs]].amax(0) if pairs else det_masks.new_zeros(det_masks.shape[1])
        for k in det.scores.argsort(descending=True).tolist():  # new tracks, best detections first
            if k in taken or float(det.scores[k]) < cfg.new_track_score:
                continue
            if float((det_masks[k] * covered).sum()) > cfg.covered_fraction * float(det_masks[k].sum()):
                continue  # mostly on instances already tracked here: a duplicate, or several objects merged
            covered = torch.maximum(covered, det_masks[k])
            track = Track(self.next_id, det.params[k], int(det.fpn_levels[k]), det.locations[k], det.boxes[k],
                          frame.index, torch.zeros(2, device=det.boxes.device))
            track.class_scores[int(det.classes[k])] = float(det.scores[k])
            self.next_id += 1
            self.tracks.append(track)
            out.append((track.id, int(rows[k])))
        return out

    def masks(self, frame: Frame, det) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, M) and (K, M) 0/1 float masks on the frame's stride-8 grid (padding cropped): the tracks'
        at their predicted locations and boxes, and the detections' own (`appearance`). Stride 8 rather
        than the mask output stride: a fraction of the work, and enough to tell instances apart."""
        device = frame.mask_feats.device
        locations, boxes = self._predicted(frame.index) if self.tracks else (det.locations[:0], det.boxes[:0])
        levels = torch.tensor([t.fpn_level for t in self.tracks], dtype=torch.long, device=device)
        params = torch.cat([torch.stack([t.params for t in self.tracks]) if self.tracks else det.params[:0],
                            det.params]).float()
        levels = torch.cat([levels, det.fpn_levels.to(device)])
        masks = self.appearance(self.model, frame.mask_feats.float(), frame.input_size, params,
                                torch.cat([locations, det.locations]).float(), levels,
                                torch.cat([boxes, det.boxes]).float(), self.logit_threshold)
        return masks[: len(self.tracks)], masks[len(self.tracks):]

    def match_scores(self, index: int, det, mask_iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, K) SipMask-VIS-style matching scores of live tracks and detections, and (T, K) same class."""
        cfg = self.config
        if not self.tracks or len(det) == 0:
            return mask_iou.new_zeros(mask_iou.shape), torch.zeros(mask_iou.shape, dtype=torch.bool)
        boxes = self._predicted(index)[1]
        same = torch.tensor([t.class_index for t in self.tracks], device=det.classes.device)[:, None] == det.classes
        return (mask_iou.clamp(min=1e-6).log() + cfg.score_weight * det.scores.float().clamp(min=1e-6).log()
                + cfg.box_weight * box_iou(boxes.float(), det.boxes.float()) + cfg.class_weight * same.float()), same

    def _predicted(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, 2) locations and (T, 4) boxes of the live tracks moved on by their velocity to frame `index`."""
        shift = torch.stack([t.velocity for t in self.tracks]) * torch.tensor(
            [[index - t.last_frame] for t in self.tracks], dtype=torch.float32, device=self.tracks[0].box.device)
        return (torch.stack([t.location for t in self.tracks]) + shift,
                torch.stack([t.box for t in self.tracks]) + shift.repeat(1, 2))

    def _follow(self, track: Track, det, k: int, index: int) -> None:
        """Track `track` continues with detection k: its filters, location, box and velocity."""
        dt = max(index - track.last_frame, 1)
        motion = ((det.boxes[k, :2] + det.boxes[k, 2:]) - (track.box[:2] + track.box[2:])) / (2 * dt)
        m = self.config.velocity_momentum
        track.velocity = motion if track.velocity.abs().sum() == 0 else m * track.velocity + (1 - m) * motion
        track.params, track.fpn_level, track.location = det.params[k], int(det.fpn_levels[k]), det.locations[k]
        track.box, track.last_frame = det.boxes[k], index
        c = int(det.classes[k])
        track.class_scores[c] = track.class_scores.get(c, 0.0) + float(det.scores[k])


def appearance(model):
    """The function that makes a model's instance masks from what a track keeps: `condinst_masks` or
    `sipmask_masks`, by the model's type."""
    return sipmask_masks if getattr(model.cfg, "arch", "condinst") == "sipmask" else condinst_masks


def condinst_masks(model: CondInst, mask_feats: torch.Tensor, input_size: tuple[int, int], params: torch.Tensor,
                   locations: torch.Tensor, levels: torch.Tensor, boxes: torch.Tensor,
                   logit_threshold: float) -> torch.Tensor:
    """CondInst: the dynamic head with filters `params` (N, P) at `locations` (N, 2) (relative coordinates
    of FPN `levels` (N,)) on the mask features (1, C, Hp/8, Wp/8) -> (N, h*w) 0/1 float masks on the
    stride-8 grid of the `input_size` image. `boxes` are not used."""
    head, stride = model.mask_head, model.mask_branch.out_stride
    logits = head.mask_logits(mask_feats, stride, locations, levels,
                              torch.zeros(len(levels), dtype=torch.long, device=levels.device), params, upsample=False)
    h, w = -(-input_size[0] // stride), -(-input_size[1] // stride)
    return (logits[:, 0, :h, :w] > logit_threshold).flatten(1).float()


def sipmask_masks(model, basis: torch.Tensor, input_size: tuple[int, int], params: torch.Tensor,
                  locations: torch.Tensor, levels: torch.Tensor, boxes: torch.Tensor,
                  logit_threshold: float, stride: int = 8) -> torch.Tensor:
    """SipMask: the 4 coefficient sets `params` (N, 4*M) combine the basis masks (1, M, Hp/2, Wp/2), pooled
    to stride 8 (the combination is linear, so this is the stride-2 logits pooled), the quadrants are
    crop-split at `boxes` (N, 4) (input pixels) -> (N, h*w) 0/1 float masks on the stride-8 grid.
    `locations` and `levels` are not used."""
    pooled = F.avg_pool2d(basis, stride // 2)[0]  # Hp/2 and Wp/2 are multiples of 16
    index, inside = quadrant_index(boxes / stride, pooled.shape[-2], pooled.shape[-1])
    logits = quadrant_logits(pooled, params).gather(1, index[:, None])[:, 0]
    h, w = -(-input_size[0] // stride), -(-input_size[1] // stride)
    return ((logits > logit_threshold) & inside)[:, :h, :w].flatten(1).float()


def pairwise_mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, M) and (B, M) 0/1 masks (float or bool) -> (A, B) IoU (0 where both are empty)."""
    a, b = a.float(), b.float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def greedy_assignment(score: torch.Tensor, allowed: torch.Tensor) -> list[tuple[int, int]]:
    """(row, col) pairs, best `score` first, each row and column used once, only where `allowed`."""
    rows_cols = allowed.nonzero().tolist()
    values = score[allowed].tolist()
    pairs, rows, cols = [], set(), set()
    for _, (r, c) in sorted(zip(values, rows_cols), key=lambda item: -item[0]):
        if r not in rows and c not in cols:
            pairs.append((r, c))
            rows.add(r)
            cols.add(c)
    return pairs
