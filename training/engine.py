"""The training loop: model, optimizer, data, AMP, DDP, logging, checkpoints, resume, evaluation.

    summary = train(cfg, CocoInstances(ann, images), "output/", val_set=val, init_weights="R-50.pkl")
    print(summary.table())

One call trains `cfg.solver.max_iter` iterations of the CondInst recipe (see training.solver) on a
global batch of `cfg.solver.ims_per_batch` images, split over the torchrun processes if any. The
output folder receives

    metrics.jsonl            one JSON object per logged iteration / evaluation
    tensorboard/             the same scalars as TensorBoard events
    log.txt                  the log of rank 0
    config.json              the effective config (with class names and category ids)
    model_0005000.pth ...    periodic checkpoints, model_final.pth at the end (condinst.checkpoint format
                             plus optimizer, scheduler, scaler, iteration, RNG states of every rank)
    last_checkpoint          the file name of the newest checkpoint (written atomically)
    inference/               results JSON of each evaluation

`resume=True` continues from `last_checkpoint` exactly where the run stopped: the weights, optimizer,
LR schedule, AMP scaler and every RNG are restored and the data loader skips the batches already
consumed (its order is a function of (seed, epoch)), so on CPU a resumed run ends bit-identical
to an uninterrupted one.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from torch import nn

from condinst.checkpoint import CheckpointError, read_checkpoint, save_checkpoint, split_checkpoint
from condinst.checkpoint import load_state_dict_strict
from condinst.config import CondInstConfig, ConfigError
from condinst.config_sources import load_config
from condinst.backbone import ResNet
from condinst.model import CondInst, build_model

from . import distributed as dist_utils
from .reporting import MetricsWriter, TrainSummary, format_seconds
from .run_state import (FINAL_CHECKPOINT, capture_rng_state, checkpoint_name, find_last_checkpoint, restore_rng_state,
                        seed_everything, write_last_checkpoint)
from .backbone_init import adapt_config_to_init, apply_init_weights, read_init_weights
from .solver import build_lr_scheduler, build_optimizer, clip_gradients, scale_solver_for_batch

logger = logging.getLogger(__name__)

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LOSS_WINDOW = 20  # iterations averaged for the summary's "final losses"


# ---- configuration ----------------------------------------------------------------------------------

def prepare_config(cfg: CondInstConfig, train_set: Any, batch_size: int | None = None, max_iter: int | None = None,
                   lr_scale_batch: bool = False, checkpoint_period: int | None = None) -> CondInstConfig:
    """The effective training config: a copy of `cfg` with the dataset's classes and the run's solver.

    * fcos.num_classes / class_names / category_ids from the dataset (custom datasets need no edits);
    * batch_size: global images per iteration; with `lr_scale_batch` the linear scaling rule is applied
      (lr x B/16, iterations, steps, warmup x 16/B), without it only the batch changes;
    * max_iter / checkpoint_period override the (scaled) schedule.
    """
    cfg = copy.deepcopy(cfg)
    category_ids = tuple(int(i) for i in getattr(train_set, "category_ids", ()))
    if category_ids:
        cfg.fcos.num_classes = len(category_ids)
        cfg.category_ids = category_ids
        cfg.class_names = tuple(getattr(train_set, "class_names", ())) or tuple(f"class_{i}" for i in category_ids)
    solver = cfg.solver
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        if lr_scale_batch:
            solver = scale_solver_for_batch(solver, batch_size)
        else:
            solver = dataclasses.replace(solver, ims_per_batch=batch_size)
    if max_iter is not None:
        if max_iter < 1:
            raise ConfigError(f"--max-iter must be >= 1, got {max_iter}")
        solver = dataclasses.replace(solver, max_iter=max_iter)
    if checkpoint_period is not None:
        if checkpoint_period < 1:
            raise ConfigError(f"--checkpoint-period must be >= 1, got {checkpoint_period}")
        solver = dataclasses.replace(solver, checkpoint_period=checkpoint_period)
    cfg.solver = solver
    return cfg.validate()


# ---- the loss as a module -----------------------------------------------------------------------------

class LossComputation(nn.Module):
    """Model + `compute_losses` in one forward, so that DistributedDataParallel's forward covers every
    use of the parameters (the heads, the controller, the mask branch and the dynamic mask head)."""

    def __init__(self, model: CondInst):
        super().__init__()
        self.model = model

    def forward(self, batch) -> dict[str, torch.Tensor]:
        if getattr(self.model.cfg, "arch", "condinst") == "sipmask":
            from .sipmask_losses import compute_sipmask_losses

            return compute_sipmask_losses(self.model, batch)
        from .losses import compute_losses

        return compute_losses(self.model, batch)


# ---- the trainer --------------------------------------------------------------------------------------

@dataclass
class TrainOptions:
    """Run settings that are not part of the model recipe."""

    output_dir: Path
    init_weights: str | os.PathLike | None = None
    resume: bool = False
    amp: Literal["off", "bf16", "fp16"] = "off"
    device: str | torch.device | None = None
    eval_period: int = 0
    num_workers: int = 4
    seed: int = 0
    log_period: int = 20
    deterministic: bool | None = None  # None: on for CPU, off for CUDA
    sync_bn: Literal["auto", "all", "none"] = "auto"
    find_unused_parameters: bool = False
    progress: bool = True
    tensorboard: bool = True


class Trainer:
    """Holds everything a run needs; `run()` trains and returns a TrainSummary."""

    def __init__(self, cfg: CondInstConfig, train_set: Any, val_set: Any, opts: TrainOptions):
        self.opts = opts
        self.train_set, self.val_set = train_set, val_set
        self.dist = dist_utils.init_distributed(opts.device)
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        self.output_dir = Path(opts.output_dir)
        if opts.amp not in AMP_DTYPES:
            raise ConfigError(f"amp must be one of {sorted(AMP_DTYPES)}, got {opts.amp!r}")
        self.cfg = cfg
        if cfg.solver.ims_per_batch % self.dist.world_size:
            raise ConfigError(f"the global batch ({cfg.solver.ims_per_batch} images) must be divisible by the "
                              f"number of processes ({self.dist.world_size})")
        self.batch_per_rank = cfg.solver.ims_per_batch // self.dist.world_size
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        dist_utils.barrier()

    # ---- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        opts = self.opts
        self._set_determinism()
        resume_from = find_last_checkpoint(self.output_dir) if opts.resume else None
        if opts.resume and resume_from is None and self.is_main:
            logger.info("--resume: no checkpoint in %s yet, starting a new run", self.output_dir)
        seed_everything(opts.seed)  # identical initial weights on every rank
        self.checkpoint = None
        self.start_iter = 0
        if resume_from is not None:
            self.checkpoint = read_checkpoint(resume_from)
            self._config_from_checkpoint(resume_from)
            self.model = build_model(self.cfg)
            sd, _, _ = split_checkpoint(self.checkpoint)
            load_state_dict_strict(self.model, sd, source=f"checkpoint {resume_from.name}")
            self.start_iter = int(self.checkpoint.get("iteration", 0))
            self._log(f"resuming from {resume_from} at iteration {self.start_iter}")
            if opts.init_weights:
                self._log(f"--weights {opts.init_weights} is ignored: the run continues from its checkpoint")
        else:
            init = read_init_weights(opts.init_weights) if opts.init_weights else None
            for note in adapt_config_to_init(self.cfg, init):
                self._log(note, logging.WARNING if init is None else logging.INFO)
            self.model = build_model(self.cfg)
            self._log(apply_init_weights(self.model, init).summary())
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self._convert_sync_bn()
        self.model.train()
        self.optimizer = build_optimizer(self.model, self.cfg.solver)
        self.scheduler = build_lr_scheduler(self.optimizer, self.cfg.solver)
        self.amp_dtype = AMP_DTYPES[opts.amp]
        self.scaler = torch.amp.GradScaler(self.device.type) if opts.amp == "fp16" else None
        if opts.amp == "fp16" and self.device.type != "cuda":
            self._log("fp16 autocast on CPU is slow and rarely useful; prefer --amp bf16 or off", logging.WARNING)
        if self.checkpoint is not None:
            self._restore_training_state()
        else:
            seed_everything(opts.seed + self.dist.rank)
        step = LossComputation(self.model)
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            step = DDP(step, device_ids=device_ids, find_unused_parameters=self.opts.find_unused_parameters)
        self.step_module = step
        if self.is_main:
            (self.output_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))

    def _log(self, message: str, level: int = logging.INFO) -> None:
        if self.is_main:
            logger.log(level, message)

    def _set_determinism(self) -> None:
        deterministic = self.opts.deterministic
        if deterministic is None:
            deterministic = self.device.type == "cpu"
        if deterministic:
            if self.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.deterministic = True
                torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True, warn_only=True)

    def _config_from_checkpoint(self, path: Path) -> None:
        """On resume the architecture, classes and input come from the checkpoint; the solver from this run."""
        try:
            stored = load_config(self.checkpoint)
        except (ConfigError, CheckpointError) as e:
            raise CheckpointError(f"{path}: cannot resume, the stored config is invalid ({e})") from None
        if stored.category_ids and self.cfg.category_ids and tuple(stored.category_ids) != tuple(self.cfg.category_ids):
            raise CheckpointError(f"{path}: cannot resume, it was trained on categories {stored.category_ids} but the "
                                  f"dataset has {self.cfg.category_ids}")
        if dataclasses.asdict(stored.solver) != dataclasses.asdict(self.cfg.solver):
            self._log(f"resuming with this run's solver settings {self.cfg.solver} (the checkpoint's: {stored.solver})")
        self.cfg = dataclasses.replace(stored, solver=self.cfg.solver)

    def _restore_training_state(self) -> None:
        ckpt = self.checkpoint
        self.optimizer.load_state_dict(ckpt["optimizer"])
        sched = dict(ckpt["scheduler"])
        sched["lr_lambdas"] = [None] * len(sched.get("lr_lambdas", [None]))  # keep this run's schedule
        self.scheduler.load_state_dict(sched)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        trainer = ckpt.get("trainer", {})
        states = ckpt.get("rng_states") or []
        same_layout = (trainer.get("world_size") == self.dist.world_size
                       and trainer.get("global_batch_size") == self.cfg.solver.ims_per_batch
                       and trainer.get("seed") == self.opts.seed)
        if not same_layout:
            self._log("the run is resumed with a different number of processes, batch size or seed than it was "
                      "started with: training continues, but not exactly as the original run would have",
                      logging.WARNING)
        if len(states) == self.dist.world_size:
            restore_rng_state(states[self.dist.rank])
        else:
            seed_everything(self.opts.seed + self.dist.rank + self.start_iter)
        self.checkpoint = None  # free the memory

    def _convert_sync_bn(self) -> None:
        """Multi-GPU BatchNorm -> SyncBatchNorm (CUDA only; see `train`'s `sync_bn`)."""
        if not (self.dist.distributed and self.device.type == "cuda") or self.opts.sync_bn == "none":
            return
        if self.opts.sync_bn == "all":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            return
        # "auto": what AdelaiDet synchronises: the BiFPN norms (and a ResNet trained with BN from scratch);
        # the mask branch keeps per-GPU BatchNorm.
        dist_utils.convert_sync_bn_outside(self.model.backbone, skip=() if self.cfg.backbone.norm == "BN" else (ResNet,))

    # ---- data -----------------------------------------------------------------------------------
    def data_iterator(self) -> Iterator:
        from .loader import build_train_loader

        kwargs = dict(batch_size=self.batch_per_rank, num_workers=self.opts.num_workers, seed=self.opts.seed,
                      rank=self.dist.rank, world_size=self.dist.world_size)
        # The sampler's order is a function of (seed, rank, world size): resuming skips the batches the
        # stopped run consumed (indices only, no images are read).
        loader = build_train_loader(self.train_set, self.cfg, start_batch=self.start_iter, **kwargs)
        return iter(loader)

    # ---- one iteration ----------------------------------------------------------------------------
    def run_step(self, batch) -> dict[str, torch.Tensor]:
        batch = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            losses = self.step_module(batch)
        losses = {k: v.float() for k, v in losses.items()}
        total = sum(losses.values())
        if not torch.isfinite(total).item():
            raise FloatingPointError(
                "loss became infinite or NaN at iteration {}: {}".format(
                    self.iteration, {k: float(v.detach()) for k, v in losses.items()})
                + " (lower the learning rate, enable --amp off, or check the annotations)")
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.cfg.solver.clip_gradients
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            if clip > 0:
                self.scaler.unscale_(self.optimizer)
                clip_gradients(self.model, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            clip_gradients(self.model, clip)
            self.optimizer.step()
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # the LR this iteration trained with
        self.scheduler.step()
        losses = {k: v.detach() for k, v in losses.items()}
        losses["total_loss"] = total.detach()
        return losses

    # ---- checkpoints and evaluation ------------------------------------------------------------------
    def save(self, iteration: int, final: bool = False) -> Path | None:
        """Every rank contributes its RNG state; rank 0 writes the file and the pointer."""
        rng_states = dist_utils.all_gather_object(capture_rng_state())
        path = None
        if self.is_main:
            name = FINAL_CHECKPOINT if final else checkpoint_name(iteration)
            trainer = {"seed": self.opts.seed, "world_size": self.dist.world_size,
                       "global_batch_size": self.cfg.solver.ims_per_batch, "amp": self.opts.amp,
                       "max_iter": self.cfg.solver.max_iter, "torch_version": str(torch.__version__)}
            path = save_checkpoint(
                self.output_dir / name, self.model, self.cfg,
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict() if self.scaler is not None else None,
                iteration=iteration, rng_states=rng_states, trainer=trainer)
            write_last_checkpoint(self.output_dir, name)
        dist_utils.barrier()
        return path

    def evaluate(self, iteration: int) -> dict | None:
        """Box / mask AP on the validation set (rank 0; the others wait)."""
        metrics = None
        if self.is_main and self.val_set is not None:
            from condinst.predictor import Predictor

            from .evaluation import evaluate, flatten_metrics, format_metrics

            predictor = Predictor(self.model, self.cfg, self.device)
            out = evaluate(predictor, self.val_set,
                           output_file=self.output_dir / "inference" / f"results_{iteration:07d}.json",
                           progress=self.opts.progress, log_summary=False)
            self.model.train()
            metrics = out.metrics
            self.writer.write(iteration, {**flatten_metrics(metrics), "eval_seconds": out.seconds})
            self._log(f"evaluation at iteration {iteration} ({out.num_images} images, "
                      f"{out.num_detections} detections):\n{format_metrics(metrics)}")
        dist_utils.barrier()
        return metrics

    # ---- the loop -----------------------------------------------------------------------------------
    def run(self) -> TrainSummary:
        previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        try:
            self.setup()
            return self._train()
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])

    def _train(self) -> TrainSummary:
        self.writer = MetricsWriter(self.output_dir, self.is_main, self.start_iter, self.opts.tensorboard)
        file_handler = self._add_file_log()
        self.bar = None
        try:
            summary = self._loop()
            self._log("\n" + summary.table())
            return summary
        finally:
            if self.bar is not None:
                self.bar.close()
            self.writer.close()
            if file_handler is not None:
                logging.getLogger("training").removeHandler(file_handler)
                file_handler.close()

    def _loop(self) -> TrainSummary:
        cfg, opts = self.cfg, self.opts
        max_iter = cfg.solver.max_iter
        self._log(f"training {max_iter} iterations from {self.start_iter}: {len(self.train_set)} images, "
                  f"{cfg.fcos.num_classes} classes, global batch {cfg.solver.ims_per_batch} "
                  f"({self.dist.world_size} process(es) x {self.batch_per_rank}), device {self.device}, amp {opts.amp}")
        if cfg.solver.warmup_iters >= max_iter:
            self._log(f"warmup ({cfg.solver.warmup_iters} iterations) is longer than the run ({max_iter})",
                      logging.WARNING)
        if self.is_main and opts.progress and self.start_iter < max_iter:
            from tqdm import tqdm

            self.bar = tqdm(total=max_iter, initial=self.start_iter, desc="train", unit="it", dynamic_ncols=True)
        window: collections.deque = collections.deque(maxlen=LOSS_WINDOW)
        pending: list[dict[str, torch.Tensor]] = []
        final_losses: dict[str, float] = {}
        final_path = None
        start_time = time.perf_counter()
        data_time = step_time = train_time = 0.0
        data = self.data_iterator() if self.start_iter < max_iter else iter(())
        for self.iteration in range(self.start_iter, max_iter):
            t0 = time.perf_counter()
            batch = next(data)
            t1 = time.perf_counter()
            losses = self.run_step(batch)
            t2 = time.perf_counter()
            data_time += t1 - t0
            step_time += t2 - t0
            train_time += t2 - t0
            pending.append(losses)
            window.append(losses)
            done = self.iteration + 1
            last = done == max_iter
            if done % max(opts.log_period, 1) == 0 or last:
                values = self._log_window(done, pending, data_time, step_time)
                pending, data_time, step_time = [], 0.0, 0.0
                final_losses = {k: v for k, v in values.items() if k.startswith(("loss", "total"))}
            if self.bar is not None:
                self.bar.update(1)
            if done % cfg.solver.checkpoint_period == 0 and not last:
                self.save(done)
            if opts.eval_period > 0 and done % opts.eval_period == 0 and not last:
                self.evaluate(done)
        del data  # stop the loader's worker processes before the final save / evaluation
        if self.start_iter < max_iter:
            final_path = self.save(max_iter, final=True)
            # Final losses: mean of the last iterations (over ranks).
            final_losses = dist_utils.all_reduce_mean(
                {k: float(torch.stack([w[k] for w in window]).mean()) for k in window[0]})
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        metrics = self.evaluate(max_iter) if self.val_set is not None else None
        iterations = max_iter - self.start_iter
        final = self.output_dir / FINAL_CHECKPOINT
        return TrainSummary(
            output_dir=self.output_dir, start_iter=self.start_iter, end_iter=max_iter, max_iter=max_iter,
            seconds=time.perf_counter() - start_time,
            images_per_second=iterations * cfg.solver.ims_per_batch / max(train_time, 1e-9) if iterations else 0.0,
            global_batch_size=cfg.solver.ims_per_batch, world_size=self.dist.world_size,
            final_losses=final_losses, metrics=metrics,
            final_checkpoint=final_path or (final if final.is_file() else None))

    def _log_window(self, iteration: int, pending: list[dict[str, torch.Tensor]], data_time: float,
                    step_time: float) -> dict[str, Any]:
        """Average the losses of the last iterations over iterations and ranks; write them out."""
        local = {k: float(torch.stack([p[k] for p in pending]).mean()) for k in pending[0]}
        values = dist_utils.all_reduce_mean(local)
        n = len(pending)
        values["lr"] = self.last_lr
        values["time"] = step_time / n
        values["data_time"] = data_time / n
        values["images_per_s"] = self.cfg.solver.ims_per_batch * n / max(step_time, 1e-9)
        if self.device.type == "cuda":
            values["max_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.writer.write(iteration, values)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values['total_loss']:.3f}", lr=f"{values['lr']:.2e}", refresh=False)
        else:
            losses = " ".join(f"{k[5:] if k.startswith('loss_') else k}={v:.4f}" for k, v in values.items()
                              if k.startswith("loss") or k == "total_loss")
            eta = (self.cfg.solver.max_iter - iteration) * values["time"]
            self._log(f"iter {iteration}/{self.cfg.solver.max_iter} {losses} lr={values['lr']:.3g} "
                      f"time={values['time']:.3f}s data={values['data_time']:.3f}s eta={format_seconds(eta)}")
        return values

    def _add_file_log(self) -> logging.Handler | None:
        if not self.is_main:
            return None
        handler = logging.FileHandler(self.output_dir / "log.txt")
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s"))
        handler.setLevel(logging.INFO)
        log = logging.getLogger("training")
        log.addHandler(handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
        return handler


def train(cfg: CondInstConfig, train_set: Any, output_dir: str | os.PathLike, val_set: Any = None,
          init_weights: str | os.PathLike | None = None, resume: bool = False, max_iter: int | None = None,
          batch_size: int | None = None, amp: Literal["off", "bf16", "fp16"] = "off",
          device: str | torch.device | None = None, eval_period: int = 0, checkpoint_period: int | None = None,
          num_workers: int = 4, seed: int = 0, log_period: int = 20, lr_scale_batch: bool = False,
          deterministic: bool | None = None, sync_bn: Literal["auto", "all", "none"] = "auto",
          find_unused_parameters: bool = False, progress: bool = True, tensorboard: bool = True) -> TrainSummary:
    """Train CondInst on `train_set` (a training.data.CocoInstances); see the module docstring.

    cfg: the recipe (a preset or YAML config); its classes are replaced by the dataset's.
    init_weights: ImageNet ResNet (.pkl / torchvision .pth) or a CondInst checkpoint to fine-tune; None = scratch.
    batch_size: global images per iteration (default cfg.solver.ims_per_batch); with lr_scale_batch the LR
        and schedule follow the linear scaling rule. max_iter / checkpoint_period override the schedule.
    amp: "bf16" (autocast), "fp16" (autocast + GradScaler) or "off". device: "cuda", "cuda:1", "cpu"
        (default CUDA when available; under torchrun each rank uses cuda:LOCAL_RANK).
    eval_period: evaluate on val_set every N iterations (0 = only at the end, when val_set is given).
    sync_bn: multi-GPU (CUDA) SyncBatchNorm: "auto" = as AdelaiDet, the BiFPN norms (and a ResNet with
        backbone.norm "BN") while the mask branch keeps per-GPU BN; "all" = every BatchNorm; "none".
    """
    cfg = prepare_config(cfg, train_set, batch_size, max_iter, lr_scale_batch, checkpoint_period)
    opts = TrainOptions(output_dir=Path(output_dir), init_weights=init_weights, resume=resume, amp=amp,
                        device=device, eval_period=eval_period, num_workers=num_workers, seed=seed,
                        log_period=log_period, deterministic=deterministic, sync_bn=sync_bn,
                        find_unused_parameters=find_unused_parameters, progress=progress, tensorboard=tensorboard)
    return Trainer(cfg, train_set, val_set, opts).run()
