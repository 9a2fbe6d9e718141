"""Command-line front ends of training and evaluation (used by `python -m condinst train|evaluate`).

    python -m condinst train --config MS_R_50_1x --weights R-50.pkl \\
        --train-ann train.json --train-images train/ --val-ann val.json --val-images val/ --output-dir out/
    torchrun --nproc_per_node 8 -m condinst train ...            # same flags, one process per GPU
    python -m condinst train ... --output-dir out/ --resume        # continue a stopped run
    python -m condinst evaluate --weights out/model_final.pth --ann val.json --images val/

`--config` is a preset name, an AdelaiDet YAML, or a JSON config dump (the `config.json` a training
run writes). User errors (bad config, missing files, unreadable weights or annotations) end with a
one-line message and exit code 2. `python -m training.cli train|evaluate ...` works too.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from condinst.cli import Command, build_parser
from condinst.config import PRESETS
from condinst.config_sources import load_config
from condinst.errors import EXIT_USAGE, UserError, run_reporting_errors
from condinst.validate import (check_device, existing_dir, existing_file, non_negative_int, positive_int,
                               writable_dir, writable_file)

logger = logging.getLogger(__name__)

class UsageError(UserError):
    """A problem with the user's input, reported in one line with exit code 2."""


# ---- shared helpers ---------------------------------------------------------------------------------

def _run_reporting_errors(fn, args: argparse.Namespace) -> int:
    """`fn(args)`; an expected error (condinst.errors) ends with one line and SystemExit(EXIT_USAGE)."""
    code = run_reporting_errors(fn, args)
    if code == EXIT_USAGE:
        raise SystemExit(EXIT_USAGE)
    return code


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (so redirected/captured output keeps working)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging() -> None:
    from .distributed import get_rank, launched_by_torchrun

    log = logging.getLogger("training")
    if not log.handlers and not logging.getLogger().handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    rank = int(os.environ.get("RANK", "0")) if launched_by_torchrun() else get_rank()
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def _open_dataset(ann: str, images: str, on_error: str):
    from .data import CocoInstances

    return CocoInstances(ann, images, on_error=on_error)


# ---- train ---------------------------------------------------------------------------------------------

def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of `condinst train`."""
    parser.add_argument("--config", default="MS_R_50_1x",
                        help=f"preset ({', '.join(PRESETS)}), AdelaiDet YAML, or JSON config dump (default MS_R_50_1x)")
    parser.add_argument("--train-ann", required=True,
                        help="COCO instances JSON of the training set (or a YouTube-VIS JSON: each listed frame an image)")
    parser.add_argument("--train-images", required=True, help="folder the training file_names are relative to")
    parser.add_argument("--val-ann", help="COCO JSON of a validation set (box and mask AP during/after training)")
    parser.add_argument("--val-images", help="image folder of the validation set")
    parser.add_argument("--output-dir", required=True, help="checkpoints, metrics.jsonl, TensorBoard events, log")
    parser.add_argument("--weights", help="initial weights: R-50.pkl / R-101.pkl (detectron2 ImageNet), torchvision "
                                          "resnet50/101 .pth, or a CondInst checkpoint to fine-tune; none = scratch")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")
    parser.add_argument("--max-iter", type=positive_int, help="iterations (default: the config's, e.g. 90000 for 1x)")
    parser.add_argument("--batch-size", type=positive_int, help="global images per iteration (default: the config's, 16)")
    parser.add_argument("--lr-scale-batch", action="store_true",
                        help="with --batch-size B: linear scaling rule, LR x B/16 and iterations/steps/warmup x 16/B")
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off", help="mixed precision (default off)")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--num-workers", type=non_negative_int, default=4, help="data-loading processes per training process")
    parser.add_argument("--eval-period", type=non_negative_int, default=0,
                        help="evaluate every N iterations (0: only at the end, when --val-ann is given)")
    parser.add_argument("--checkpoint-period", type=positive_int, help="save every N iterations (default: the config's, 5000)")
    parser.add_argument("--log-period", type=positive_int, default=20, help="log losses every N iterations")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the data order, augmentation and initialisation")
    parser.add_argument("--sync-bn", choices=("auto", "all", "none"), default="auto",
                        help="multi-GPU SyncBatchNorm: auto = as AdelaiDet (BiFPN norms; the mask branch keeps "
                             "per-GPU BN), all = every BatchNorm, none")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="bad annotations/images: stop with an error (default) or skip them with a warning")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Run `condinst train` with parsed arguments; returns 0 (exit code 2 via SystemExit on bad input)."""
    return _run_reporting_errors(_train, args)


def _train(args: argparse.Namespace) -> int:
    existing_file(args.train_ann, "--train-ann")
    existing_dir(args.train_images, "--train-images")
    if (args.val_ann is None) != (args.val_images is None):
        raise UsageError("--val-ann and --val-images go together")
    if args.val_ann is not None:
        existing_file(args.val_ann, "--val-ann")
        existing_dir(args.val_images, "--val-images")
    if args.weights is not None:
        existing_file(args.weights, "--weights")
    writable_dir(args.output_dir, "--output-dir")
    if args.lr_scale_batch and args.batch_size is None:
        raise UsageError("--lr-scale-batch needs --batch-size")
    check_device(args.device)
    _setup_logging()
    from .run_state import LAST_CHECKPOINT

    output_dir = Path(args.output_dir)
    if not args.resume and (output_dir / LAST_CHECKPOINT).is_file():
        raise UsageError(f"--output-dir {output_dir} already holds a run ({LAST_CHECKPOINT} exists): pass --resume "
                         "to continue it, or choose another folder")
    cfg = load_config(args.config)
    if getattr(cfg, "arch", "condinst") == "sipmask" and cfg.sipmask.rescoring:
        from .sipmask_losses import RESCORING_MIN_SIZE

        short = min(min(cfg.input.min_size_train), cfg.input.max_size_train)
        if short < RESCORING_MIN_SIZE:
            raise UsageError(f"--config {args.config}: SipMask++'s mask re-scoring trains on images of at least "
                             f"{RESCORING_MIN_SIZE} px a side; input.min_size_train / max_size_train allow {short}")
    train_set = _open_dataset(args.train_ann, args.train_images, args.on_error)
    val_set = _open_dataset(args.val_ann, args.val_images, args.on_error) if args.val_ann else None
    from .engine import train

    train(cfg, train_set, output_dir, val_set=val_set, init_weights=args.weights, resume=args.resume,
          max_iter=args.max_iter, batch_size=args.batch_size, amp=args.amp, device=args.device,
          eval_period=args.eval_period, checkpoint_period=args.checkpoint_period, num_workers=args.num_workers,
          seed=args.seed, log_period=args.log_period, lr_scale_batch=args.lr_scale_batch, sync_bn=args.sync_bn,
          progress=not args.no_progress)
    from .distributed import cleanup_distributed

    cleanup_distributed()
    return 0


# ---- evaluate ------------------------------------------------------------------------------------------

def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of `condinst evaluate`."""
    parser.add_argument("--weights", required=True, help="a CondInst checkpoint (ours, AdelaiDet or mmdetection)")
    parser.add_argument("--ann", required=True, help="COCO instances JSON with the ground truth")
    parser.add_argument("--images", required=True, help="folder the file_names are relative to")
    parser.add_argument("--config", help="preset / YAML / JSON config (default: the one stored in or inferred "
                                         "from the checkpoint); test-time settings are taken from it")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--output", help="write the detections as a COCO results JSON here")
    parser.add_argument("--max-images", type=positive_int, help="evaluate only the first N images (quick check)")
    parser.add_argument("--snap-edges", action="store_true",
                        help="score the masks with their boundaries snapped to the image's edges (condinst.snap; "
                             "what the annotation app stores); default: the model's own masks")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="bad annotations/images: stop with an error (default) or skip them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_evaluate(args: argparse.Namespace) -> int:
    """Run `condinst evaluate`; prints the AP table; returns 0 (exit code 2 via SystemExit on bad input)."""
    return _run_reporting_errors(_evaluate, args)


def _evaluate(args: argparse.Namespace) -> int:
    existing_file(args.weights, "--weights")
    existing_file(args.ann, "--ann")
    existing_dir(args.images, "--images")
    if args.output is not None:
        writable_file(args.output, "--output")
    check_device(args.device)
    _setup_logging()
    from condinst.predictor import Predictor

    from .distributed import resolve_device
    from .evaluation import evaluate, format_metrics

    config = load_config(args.config) if args.config else None
    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"--device {args.device}: {e}") from None
    dataset = _open_dataset(args.ann, args.images, args.on_error)  # checked before the model loads
    predictor = Predictor.from_weights(args.weights, config, device=str(device))
    out = evaluate(predictor, dataset, output_file=args.output, progress=not args.no_progress,
                   max_images=args.max_images, log_summary=False, snap_edges=args.snap_edges)
    print(f"{out.num_images} images, {out.num_detections} detections, {out.seconds:.1f}s "
          f"({1000 * out.timings['inference_s_per_image']:.0f} ms/image inference)")
    print(format_metrics(out.metrics))
    if out.results_file is not None:
        print(f"results written to {out.results_file}")
    return 0


# ---- standalone entry point ------------------------------------------------------------------------------

TRAIN = Command("train or fine-tune on a COCO dataset", add_train_arguments, run_train)
EVALUATE = Command("COCO box and mask AP of a checkpoint", add_evaluate_arguments, run_evaluate)


COMMANDS = {"train": TRAIN, "evaluate": EVALUATE}


def main(argv: list[str] | None = None) -> int:
    args = build_parser(COMMANDS, prog="python -m training.cli").parse_args(argv)
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
