"""High-level inference: weights + config -> model; RGB images -> boxes, classes, scores, masks.

    predictor = Predictor.from_weights("CondInst_MS_R_50_1x.pth")
    result = predictor(read_image("photo.jpg"))[0]      # ImageResult at the photo's size
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .checkpoint import (CheckpointError, config_from_checkpoint, load_state_dict_strict, read_checkpoint,
                         split_checkpoint)
from .config import CondInstConfig, ConfigError
from .config_sources import load_config
from .model import CondInst, HeadOutputs, InstanceResult, build_model, normalize_and_pad
from .postprocess import ImageResult
from .preprocess import resize_for_test, resized_shape, to_rgb_uint8


def load_model(weights: str | os.PathLike | None, config: CondInstConfig | str | os.PathLike | None = None,
               device: str | torch.device = "cpu") -> tuple[CondInst, CondInstConfig]:
    """Build the model (CondInst, or SipMask for its configs/checkpoints) in eval mode and load `weights` strictly.

    Without `config`, the architecture comes from the checkpoint (ours stores it; official ones are
    recognised from their keys and shapes). With `config`, the model is built from it and the
    checkpoint must fit it exactly. `weights=None` gives randomly initialised weights (needs config).
    """
    cfg = load_config(config) if config is not None else None
    if weights is None:
        if cfg is None:
            raise ConfigError("either weights or a config is needed to build a model")
        return build_model(cfg).to(device).eval(), cfg
    sd, kind, extras = split_checkpoint(read_checkpoint(weights))
    stored = config_from_checkpoint(extras, sd, kind)
    if cfg is None:
        cfg = stored
    else:
        if not cfg.class_names and stored.class_names and cfg.fcos.num_classes == stored.fcos.num_classes:
            cfg = replace(cfg, class_names=stored.class_names, category_ids=stored.category_ids)
    model = build_model(cfg)
    try:
        load_state_dict_strict(model, sd, source=f"checkpoint {Path(weights).name}")
    except CheckpointError as e:
        if hasattr(stored, "mask_branch"):
            hint = (f" (the checkpoint looks like: {stored.neck.kind}, R-{stored.backbone.depth}, {stored.fcos.num_classes}"
                    f" classes, semantic head {'on' if stored.mask_branch.semantic_loss_on else 'off'})")
        else:
            hint = f" (the checkpoint looks like: {stored.name}, {stored.fcos.num_classes} classes)"
        raise CheckpointError(str(e) + hint) from None
    return model.to(device).eval(), cfg


def with_test_settings(cfg: CondInstConfig, score_threshold: float | None = None, min_size: int | None = None,
                       max_size: int | None = None) -> CondInstConfig:
    """A copy of `cfg` with the given test-time settings replaced (`cfg` itself is left unchanged)."""
    fcos, inp = cfg.fcos, cfg.input
    if score_threshold is not None:
        fcos = replace(fcos, score_threshold=score_threshold)
    if min_size is not None:
        inp = replace(inp, min_size_test=min_size)
    if max_size is not None:
        inp = replace(inp, max_size_test=max_size)
    return replace(cfg, fcos=fcos, input=inp)


class Predictor:
    """Runs the official test-time pipeline on RGB uint8 images of any size.

    Resize (shortest edge, PIL bilinear), BGR/RGB per config, normalise, pad to 32, detect and
    segment, then boxes and masks back at each image's original size.
    """

    def __init__(self, model, cfg: CondInstConfig | None = None, device: str | torch.device | None = None,
                 fast: bool = False, fast_dtype: torch.dtype = torch.bfloat16):
        """`model`: a `CondInst`, or an `export.OnnxModel` (the whole exported graph, CPU).
        `fast`: channels_last, autocast to `fast_dtype` on CUDA, resizing on the device (close to,
        not bit-identical with, the official pipeline). The default fp32 mode is the reference."""
        self.model = model.eval() if isinstance(model, torch.nn.Module) else model
        self.cfg = cfg or model.cfg  # test settings, passed to the model on every call
        self.is_torch = isinstance(model, torch.nn.Module)
        if self.is_torch:
            self.device = torch.device(device) if device is not None else next(model.parameters()).device
            self.model.to(self.device)
        else:
            self.device = torch.device("cpu")
        self.fast = fast
        self.fast_dtype = fast_dtype
        if fast and self.is_torch:
            self.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_weights(cls, weights, config=None, device: str = "cpu", score_threshold: float | None = None,
                     min_size: int | None = None, max_size: int | None = None, fast: bool = False,
                     optimize: bool = True, threads: int | None = None, backend: str = "onnxruntime") -> "Predictor":
        """Load `weights` (see `load_model`); `optimize` folds FrozenBN into the convs and uses
        channels_last (same outputs to ~1e-6, much faster on CPU); the model is then inference-only.
        An `.onnx` file is the whole exported graph, run on the CPU by `backend` (onnxruntime or
        openvino) with `threads` threads (its config comes from the file)."""
        if str(weights).endswith(".onnx"):
            from .export import OnnxModel

            if config is not None:
                raise ConfigError(f"{Path(weights).name}: an ONNX file carries its own config; drop --config")
            model = OnnxModel(weights, threads, backend)
            return cls(model, with_test_settings(model.cfg, score_threshold, min_size, max_size), "cpu", fast=fast)
        model, cfg = load_model(weights, config, device)
        if optimize:
            model.optimize_for_inference()
        return cls(model, with_test_settings(cfg, score_threshold, min_size, max_size), device, fast=fast)

    # ---- class metadata ---------------------------------------------------------------------
    def class_name(self, index: int) -> str:
        return self.cfg.class_names[index] if self.cfg.class_names else f"class_{index}"

    def category_id(self, index: int) -> int:
        return int(self.cfg.category_ids[index]) if self.cfg.category_ids else int(index) + 1

    # ---- pipeline -----------------------------------------------------------------------------
    def prepare(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """RGB uint8 images -> (B, 3, H, W) normalised padded batch and the resized sizes."""
        tensors, sizes = [], []
        for image in images:
            image = to_rgb_uint8(image)
            if self.fast and self.cfg.input.resize == "shortest_edge":
                resized = self._resize_on_device(image)
            else:
                array = resize_for_test(image, self.cfg.input)  # the input itself when no resize is needed
                if not array.flags.writeable:  # e.g. a decoded video frame: torch warns on read-only memory
                    array = array.copy()
                resized = torch.from_numpy(array).to(self.device).permute(2, 0, 1)
            if self.cfg.input.format == "BGR":
                resized = resized.flip(0)
            tensors.append(resized)
            sizes.append(tuple(resized.shape[-2:]))
        batch = normalize_and_pad(tensors, self.cfg.input.pixel_mean, self.cfg.input.pixel_std,
                                  self.cfg.input.size_divisibility)
        if self.is_torch and (self.fast or getattr(self.model, "inference_optimized", False)):
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch, sizes

    def _resize_on_device(self, image: np.ndarray) -> torch.Tensor:
        """Antialiased bilinear resize on the model's device: (H, W, 3) uint8 -> (3, h, w) float."""
        h, w = resized_shape(image.shape[0], image.shape[1], self.cfg.input.min_size_test,
                             self.cfg.input.max_size_test)
        if not image.flags.writeable:  # e.g. a view of a PIL image; torch wants writable memory
            image = image.copy()
        x = torch.from_numpy(image).to(self.device, non_blocking=True).permute(2, 0, 1)[None].float()
        if (h, w) != tuple(image.shape[:2]):
            x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return x[0].round_().clamp_(0, 255)

    @torch.no_grad()
    def __call__(self, images: np.ndarray | list[np.ndarray]) -> list[ImageResult]:
        if isinstance(images, np.ndarray):
            images = [images]
        if not images:
            return []
        batch, sizes = self.prepare(images)
        with self._autocast():
            instances = self.model.inference(batch, sizes, self.cfg)
        return self.finish(instances, tuple(batch.shape[-2:]), sizes, [image.shape[:2] for image in images])

    @torch.no_grad()
    def results(self, outputs: HeadOutputs, padded_size: tuple[int, int], input_sizes: list[tuple[int, int]],
                image_sizes: list[tuple[int, int]]) -> list[ImageResult]:
        """Dense outputs of a batch (PyTorch model) -> each image's final result (`Explainer.result`
        and evaluation come through here, `__call__` through `finish` alone).

        padded_size (Hp, Wp) of the batch; input_sizes the resized (h, w) and image_sizes the
        original (H, W) of each image.
        """
        with self._autocast():
            instances = self._torch_model().instances(outputs, input_sizes, self.cfg)
        return self.finish(instances, padded_size, input_sizes, image_sizes)

    @torch.no_grad()
    def with_features(self, images: list[np.ndarray]) -> tuple[list[ImageResult], torch.Tensor, list[tuple[int, int]]]:
        """`self(images)` plus what the video tracker re-applies filters to (PyTorch model only):
        (results, mask features (B, C_mask, Hp/8, Wp/8) of the padded batch - a SipMask model's basis
        masks (B, M, Hp/2, Wp/2) - and the resized (h, w) of each image)."""
        model = self._torch_model()
        batch, sizes = self.prepare(images)
        with self._autocast():
            outputs = model.forward_heads(batch)
        results = self.results(outputs, tuple(batch.shape[-2:]), sizes, [image.shape[:2] for image in images])
        feats = outputs.basis if getattr(self.cfg, "arch", "condinst") == "sipmask" else outputs.mask_feats
        return results, feats, sizes

    def finish(self, instances: list[InstanceResult], padded_size: tuple[int, int],
               input_sizes: list[tuple[int, int]], image_sizes: list[tuple[int, int]]) -> list[ImageResult]:
        """Detections and mask logits of each image (from PyTorch or the exported graph) -> results at
        the original size: the one path from the model's instances to boxes and pasted masks."""
        return [r.to_image_result(padded_size, size, tuple(image_size), self.cfg)
                for r, size, image_size in zip(instances, input_sizes, image_sizes)]

    def _torch_model(self) -> CondInst:
        if not self.is_torch:
            raise ConfigError("this needs the PyTorch model (.pth): an exported ONNX graph gives final results only")
        return self.model

    def _autocast(self):
        enabled = self.fast and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=self.fast_dtype, enabled=enabled)

    @torch.no_grad()
    def heads(self, image: np.ndarray) -> tuple[HeadOutputs, torch.Tensor, tuple[int, int]]:
        """Dense outputs of one image (for explanations): (outputs, padded batch, resized size)."""
        model = self._torch_model()
        batch, sizes = self.prepare([image])
        return model.forward_heads(batch), batch, sizes[0]
