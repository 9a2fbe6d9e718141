"""The model the app serves: predictor, explainer cache, class <-> category mapping, checkpoint switch.

Everything that runs the network goes through one `ModelSession`, under one lock, and reaches the
library through its single inference path (`condinst.explain.Explainer`, or SipMask's
`condinst.sipmask.explain.SipMaskExplainer`, whose `result()` equals `Predictor.__call__`). Predictions
come back as `app.store.workspace.Prediction`s keyed by workspace category ids, with the metadata the Explain
view needs (detection index, FPN level, location).
"""
from __future__ import annotations

import hashlib
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

from app.errors import ServiceError
from app.store.masks import encode_crop
from app.store.workspace import Prediction, Workspace

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WEIGHTS = REPO_ROOT / "assets" / "default_model" / "model.pth"


def resolve_weights(weights: str | None) -> Path:
    """The checkpoint to load: --weights, else the bundled default (clear exit if missing)."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise SystemExit(f"error: --weights {weights}: no such file")
        if not DEFAULT_WEIGHTS.is_file():
            print(f"note: the bundled default model {DEFAULT_WEIGHTS} is missing; using {path}", file=sys.stderr)
        return path
    if not DEFAULT_WEIGHTS.is_file():
        raise SystemExit(f"error: the bundled default model {DEFAULT_WEIGHTS} is missing. Train or download it "
                         "there, or start with --weights PATH to serve another checkpoint.")
    return DEFAULT_WEIGHTS


def model_key(weights: Path | None) -> str:
    """A short id of a weights file (path, size, mtime) to tag what a model produced."""
    if weights is None:
        return "random"
    stat = Path(weights).stat()
    return hashlib.sha1(f"{Path(weights).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def level_name(level: int) -> str:
    """FPN level index (0 = stride 8) -> its usual name P3..P7."""
    return f"P{int(level) + 3}"


class ExplainerCache:
    """LRU cache of `Explainer`s keyed by (image key, model key), safe across threads."""

    def __init__(self, capacity: int = 3):
        self.capacity = max(1, int(capacity))
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key, explainer) -> None:
        with self._lock:
            self._items[key] = explainer
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class ModelSession:
    """One loaded model and what the app asks of it."""

    def __init__(self, predictor, weights: Path | None = None, config: str | None = None, device: str = "cpu",
                 explainer_cache: int = 3, fast: bool = False, backend: str = "onnxruntime", snap_edges: bool = False):
        self.predictor = predictor
        self.snap_edges = snap_edges  # predictions' boundaries snapped to the image's edges (`condinst.snap`)
        self.fast, self.backend = fast, backend
        self.weights = Path(weights) if weights else None
        self.config = config
        self.device = device
        self.key = model_key(self.weights)
        self.explainers = ExplainerCache(explainer_cache)
        self.lock = threading.RLock()
        self._refine_image: tuple[str, np.ndarray] | None = None  # (image key, RGB) of the last refine

    @classmethod
    def load(cls, weights: str | Path | None, config: str | None = None, device: str = "cpu", fast: bool = False,
             backend: str = "onnxruntime", snap_edges: bool = False) -> "ModelSession":
        """A checkpoint (PyTorch), or the whole graph exported to ONNX (`python -m condinst export`), run
        by `backend` (onnxruntime or openvino); `fast` is the Predictor's fast mode; `snap_edges`: the
        predictions' boundaries re-placed on the image's edges (`condinst.snap.snap_masks`), else the
        model's own masks."""
        from condinst.predictor import Predictor

        return cls(Predictor.from_weights(weights, config, device=device, fast=fast, backend=backend), weights, config,
                   device, fast=fast, backend=backend, snap_edges=snap_edges)

    @property
    def explains(self) -> bool:
        """Whether this model can explain itself (a PyTorch checkpoint, CondInst or SipMask): an ONNX graph
        only gives its detections."""
        return bool(getattr(self.predictor, "is_torch", True))

    @property
    def is_sipmask(self) -> bool:
        return getattr(self.predictor.cfg, "arch", "condinst") == "sipmask"

    # ---- classes --------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.predictor.cfg.fcos.num_classes)

    def class_name(self, index: int) -> str:
        return self.predictor.class_name(index)

    def category_id(self, index: int) -> int:
        return self.predictor.category_id(index)

    def class_index(self, category_id: int) -> int | None:
        """Model class index of a workspace category id, None if the model does not know it."""
        for k in range(self.num_classes):
            if self.category_id(k) == int(category_id):
                return k
        return None

    def sync_categories(self, workspace: Workspace) -> list[str]:
        """Make every model class a workspace category (ids from the model); notes on name clashes."""
        wanted = {self.category_id(k): self.class_name(k) for k in range(self.num_classes)}
        existing = {c.id: c.name for c in workspace.categories()}
        notes = [f"Model class {name!r} has category id {cid}, which this workspace calls {existing[cid]!r}; "
                 "the workspace name is kept." for cid, name in wanted.items() if cid in existing and existing[cid] != name]
        workspace.ensure_categories(wanted)
        return notes

    @property
    def name(self) -> str:
        return self.weights.name if self.weights else "random weights"

    def info(self) -> str:
        """One Markdown line about the model in use."""
        classes = ", ".join(self.class_name(k) for k in range(min(self.num_classes, 6)))
        more = f", ... ({self.num_classes} classes)" if self.num_classes > 6 else ""
        masks = " - masks snapped to edges" if self.snap_edges else ""
        return f"Model: `{self.name}` on {self.device} - classes: {classes}{more}{masks}"

    # ---- running the model --------------------------------------------------------------------------
    def explainer(self, image_key: str, load_image: Callable[[], np.ndarray]):
        """The (cached) Explainer of an image for the current model; `load_image` gives its RGB pixels."""
        from condinst.explain import Explainer
        from condinst.sipmask.explain import SipMaskExplainer

        if not self.explains:
            raise ServiceError(f"{self.name} is an ONNX graph: it segments images, but the Explain view, 'Add at "
                               "point' and click-to-refine need the PyTorch checkpoint (start the app with the .pth).")
        key = (image_key, self.key)
        explainer = self.explainers.get(key)
        if explainer is None:
            image = load_image()
            with self.lock:
                explainer = (SipMaskExplainer if self.is_sipmask else Explainer)(self.predictor, image)
            self.explainers.put(key, explainer)
        return explainer

    def refine(self, image_key: str, load_image: Callable[[], np.ndarray], positive, negative,
               prior: np.ndarray | None = None, done=()) -> tuple[np.ndarray, int | None]:
        """Click-to-refine (`condinst.refine.refine_mask`) on an image: the (H, W) bool mask for the
        [(x, y)] positive / negative clicks and the model class under the positive ones; prior / done: the
        mask being refined and the ((x, y), value) clicks it already answers (a later click is local)."""
        from condinst.refine import refine_mask

        explainer = self.explainer(image_key, load_image)
        last = self._refine_image  # the pixels of the image refined last (clicks come in series on one image)
        image = last[1] if last is not None and last[0] == image_key else load_image()
        self._refine_image = (image_key, image)
        with self.lock:
            return refine_mask(explainer, image, positive, negative, self.predictor.cfg.mask_head.mask_threshold,
                               prior, done)

    def predictions(self, image_key: str, load_image: Callable[[], np.ndarray]) -> list[Prediction]:
        """The model's detections of an image as workspace predictions (per-instance RLE; nothing full-size)."""
        loaded: list[np.ndarray] = []  # the pixels are decoded once (12 MP: ~0.2 s), for the model and the snapping

        def pixels() -> np.ndarray:
            if not loaded:
                loaded.append(load_image())
            return loaded[0]

        if self.explains:  # the explainer keeps the dense outputs for Explain / refine; same result
            explainer = self.explainer(image_key, pixels)
            with self.lock:
                result = explainer.result()
        else:
            with self.lock:
                result = self.predictor(pixels())[0]
        return self.to_predictions(result, pixels() if self.snap_edges and len(result) else None)

    def to_predictions(self, result, image: np.ndarray | None = None, rows: set[int] | None = None) -> list[Prediction]:
        """A `condinst.postprocess.ImageResult` as workspace predictions (per-instance RLE, with meta);
        with `snap_edges` and the (H, W, 3) uint8 RGB `image`, their boundaries snapped to its edges (only
        those of `rows` when given: the ones the caller keeps)."""
        from condinst.snap import mask_stride, snap_result

        if self.snap_edges and image is not None:  # outside the model's lock: plain CPU work on this image
            result = snap_result(image, result, mask_stride(self.predictor.cfg), rows=rows)
        det = result.detections
        (h, w), (ih, iw) = result.image_size, result.input_size
        masks = result.instance_masks
        out = []
        for k in range(len(result)):
            lx, ly = det.locations[k].tolist()
            meta = {"det_index": k, "model": self.key, "fpn_level": int(det.fpn_levels[k]),
                    "location": [round(lx * w / iw, 2), round(ly * h / ih, 2)]}
            (y0, x0), crop = masks.offsets[k], masks.crops[k].cpu().numpy()
            out.append(Prediction(self.category_id(int(result.classes[k])), float(result.scores[k]),
                                  encode_crop(masks.rle(k), crop, y0, x0), meta))
        return out

    def segment_point(self, image_key: str, load_image: Callable[[], np.ndarray], x: int, y: int,
                      class_index: int | None = None):
        """What the filters generated at (x, y) segment (`Explainer.at_point`)."""
        explainer = self.explainer(image_key, load_image)
        with self.lock:
            return explainer.at_point(x, y, class_index)

    def same_detection(self, explainer, meta: dict | None, score: float | None) -> bool:
        """Whether detection meta["det_index"] of the current model is the one stored with an instance."""
        meta = meta or {}
        if meta.get("model") != self.key or "det_index" not in meta or score is None:
            return False
        with self.lock:
            result = explainer.result()
        k = int(meta["det_index"])
        return 0 <= k < len(result) and abs(float(result.scores[k]) - float(score)) < 1e-4

    def switch(self, weights: str | Path, config: str | None = None) -> None:
        """Load another checkpoint (e.g. a retrained one); ServiceError if it cannot be loaded."""
        from condinst.predictor import Predictor

        weights = Path(weights)
        try:
            predictor = Predictor.from_weights(weights, config, device=self.device, fast=self.fast, backend=self.backend)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported to the user
            raise ServiceError(f"Cannot load {weights.name}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        with self.lock:
            self.predictor, self.weights, self.config = predictor, weights, config
            self.key = model_key(weights)
            self.explainers.clear()
