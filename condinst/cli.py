"""Command line: `python -m condinst predict | export | video | evaluate-video | train | evaluate` (also
installed as `condinst`).

The library's own commands (`predict`, `export`) live here; `video` and `evaluate-video` in condinst/video/cli.py. Other packages add theirs through the entry-point
group `condinst.commands` (pyproject.toml: `train` and `evaluate` come from `training.cli`), so the
command line reaches the trainer without the library importing it.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from .errors import UserError, reported
from .preprocess import IMAGE_SUFFIXES
from .validate import (OneLineParser, check_device, edge_size, existing_dir, existing_file, non_negative_int,
                       positive_int, probability, writable_dir, writable_file)


class CLIError(UserError):
    """A user mistake on the command line: printed as one line, exit code 2."""


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="checkpoint: official AdelaiDet/mmdetection .pth or ours")
    p.add_argument("--config", help="preset name or AdelaiDet YAML; default: taken from the checkpoint")
    p.add_argument("--input", nargs="+", required=True, help="image files or folders of images")
    p.add_argument("--output", required=True,
                   help="COCO results JSON to write (image ids from --ann, else 1..N named in OUTPUT.images.json)")
    p.add_argument("--ann", help="COCO GT JSON of the inputs: the results take its image ids (matched by file name)")
    p.add_argument("--vis", help="folder for images with the detections drawn")
    p.add_argument("--score-threshold", type=probability, default=None,
                   help="keep detections scoring at least this (final score; default: keep all the model returns)")
    p.add_argument("--min-size", type=edge_size, help="test-time shortest edge (default: config, 800)")
    p.add_argument("--max-size", type=edge_size, help="test-time longest edge cap (default: config, 1333)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=("onnxruntime", "openvino"), default=None,
                   help="runtime of an exported .onnx --weights file (default: onnxruntime)")
    p.add_argument("--fast", action="store_true",
                   help="fast mode: channels_last, resizing with torch, bf16 autocast on CUDA (close to, not "
                        "bit-identical with, the reference pipeline)")
    p.add_argument("--snap-edges", action="store_true",
                   help="re-place each mask's boundary on the image's edges (GrabCut in a band of one mask-logit "
                        "cell, condinst.snap; what the annotation app stores); default: the model's own masks")
    p.add_argument("--batch-size", type=positive_int, default=1,
                   help="images per model call; a batch holds images of one padded size (default 1)")
    p.add_argument("--workers", type=non_negative_int, default=2,
                   help="threads decoding the next images while the model runs (0: decode in turn; default 2)")
    p.add_argument("--resume", action="store_true",
                   help="continue the killed run whose finished batches are in OUTPUT.parts (done automatically "
                        "when that folder exists; this flag only insists that it does)")


def _expand_inputs(items: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(q for q in path.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CLIError(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            raise CLIError(f"{path}: no such file or folder")
    return paths


def check_backend(backend: str | None, weights: str) -> None:
    """--backend needs an .onnx file and its runtime installed."""
    import importlib.util

    if backend is None:
        return
    if not weights.endswith(".onnx"):
        raise CLIError(f"--backend {backend}: needs an exported .onnx --weights file (python -m condinst export)")
    if importlib.util.find_spec(backend) is None:
        raise CLIError(f"--backend {backend}: the {backend} package is not installed (pip install -r requirements.txt)")


def _unique(paths: list[Path]) -> list[Path]:
    """Each file once (the first time it is named), in the order given."""
    seen: set[Path] = set()
    return [p for p in paths if not (p.resolve() in seen or seen.add(p.resolve()))]


def _run_settings(args: argparse.Namespace) -> dict:
    """What makes two runs' results the same: a parts folder is only resumed by a run with these."""
    weights = Path(args.weights).resolve()
    return {"weights": str(weights), "weights_bytes": weights.stat().st_size, "config": args.config,
            "score_threshold": args.score_threshold, "min_size": args.min_size, "max_size": args.max_size,
            "backend": args.backend, "fast": args.fast, "snap_edges": args.snap_edges}


def run_predict(args: argparse.Namespace) -> int:
    inputs = _unique(_expand_inputs(args.input))  # every check before the imports of torch and the model
    existing_file(args.weights, "--weights")
    if args.weights.endswith(".onnx") and args.config:
        raise CLIError(f"--config {args.config}: an ONNX file carries its own config; drop --config")
    check_backend(args.backend, args.weights)
    writable_file(args.output, "--output")
    if args.vis:
        writable_dir(args.vis, "--vis")
    from .coco import gt_image_ids, images_file

    if args.ann:
        image_ids = gt_image_ids(existing_file(args.ann, "--ann"), inputs)
    else:
        image_ids = list(range(1, len(inputs) + 1))
        writable_file(str(images_file(args.output)), "--output")
    from .scale import PartStore

    store, settings = PartStore(Path(args.output)), _run_settings(args)
    if args.resume and not store.exists():
        raise CLIError(f"--resume: nothing to resume ({store.folder} does not exist)")
    store.check(settings)
    check_device(args.device)
    from .distributed import (all_gather_object, barrier, broadcast_object, cleanup_distributed, die_with_launcher,
                              init_gloo, torchrun_rank)

    rank, world, local_rank = torchrun_rank()
    die_with_launcher()
    init_gloo()
    try:
        keys = [str(p.resolve()) for p in inputs]
        if rank == 0:
            store.start(settings)
        done = broadcast_object(set(store.done()) & set(keys) if rank == 0 else None)
        if done and rank == 0:
            print(f"resuming: {len(done)} of {len(keys)} image(s) already done ({store.folder})")
        todo = [(p, k) for p, k in zip(inputs, keys) if k not in done]
        failures = _predict_share(args, store, todo[rank::world], rank, world, local_rank)
        failures = sum(all_gather_object(failures))  # also waits for every rank's last part
        if rank == 0:
            _merge(store, keys, failures, Path(args.output), dict(zip(keys, image_ids)),
                   None if args.ann else dict(zip(keys, inputs)))
        barrier()  # the group ends together (gloo aborts a process leaving while a peer still talks)
        return 1 if failures else 0
    except BaseException:
        if rank == 0:  # a failed start (bad --weights, --config) leaves no parts folder: its rerun starts afresh
            store.discard_if_empty()
        raise
    finally:
        cleanup_distributed()


def _merge(store, keys: list[str], failures: int, output: Path, image_ids: dict[str, int],
           paths: dict[str, Path] | None) -> None:
    """Rank 0: every image's entries from the parts, in input order, into one file, each with its
    ``image_id`` (`condinst.coco`; with ``paths``, the images named in OUTPUT.images.json);
    then the parts go."""
    from .io import atomic_write_json
    from .coco import images_coco, images_file

    done = store.done()
    missing = [k for k in keys if k not in done]
    if len(missing) > failures:
        raise CLIError(f"{len(missing)} image(s) have no results in {store.folder}; run again to finish them")
    results = [{"image_id": image_ids[k], **entry} for k in keys if k in done for entry in done[k]]
    if paths is not None:
        present = [k for k in keys if k in done]
        atomic_write_json(images_file(output), images_coco([paths[k] for k in present],
                                                           [image_ids[k] for k in present], results), indent=1)
    atomic_write_json(output, results)
    store.remove()
    print(f"wrote {len(results)} detections for {len(keys) - len(missing)} image(s) to {output}")


def _predict_share(args: argparse.Namespace, store, items: list[tuple[Path, str]], rank: int, world: int,
                   local_rank: int) -> int:
    """Predict this rank's `items` (path, key) in batches, one part file a batch; returns the failures."""
    import torch

    from .coco import result_to_coco
    from .predictor import Predictor
    from .preprocess import ImageError
    from .scale import SizeBatcher, decoded
    from .snap import mask_stride, snap_result

    device = f"cuda:{local_rank}" if world > 1 and args.device == "cuda" else args.device
    predictor = Predictor.from_weights(args.weights, args.config, device=device, min_size=args.min_size,
                                       max_size=args.max_size, fast=args.fast, backend=args.backend or "onnxruntime",
                                       threads=torch.get_num_threads() if world > 1 else None)
    k = predictor.cfg.fcos.num_classes
    names = [predictor.class_name(i) for i in range(k)]
    ids = [predictor.category_id(i) for i in range(k)]
    min_score = args.score_threshold or 0.0
    prefix = f"[rank {rank}] " if world > 1 else ""
    inp = predictor.cfg.input
    batcher = SizeBatcher(args.batch_size, inp.min_size_test, inp.max_size_test, inp.size_divisibility, inp.resize)
    key_of = dict(items)
    stride = mask_stride(predictor.cfg)

    def run(batch: list[tuple[Path, "object"]]) -> None:
        start = time.perf_counter()
        results = predictor([image for _, image in batch])
        if args.snap_edges:
            results = [snap_result(image, r, stride) for (_, image), r in zip(batch, results)]
        entries = [result_to_coco(r, ids, file_name=path.name, class_names=names, min_score=min_score, decimals=3)
                   for (path, _), r in zip(batch, results)]
        if args.vis:  # before the part: an image counts as done once its picture is written too
            from .visualize import draw_result, save_picture

            for (path, image), result in zip(batch, results):
                save_picture(Path(args.vis) / (path.stem + ".png"), draw_result(image, result, names, min_score))
        store.write(rank, [(key_of[path], e) for (path, _), e in zip(batch, entries)])
        seconds = (time.perf_counter() - start) / len(batch)
        for (path, _), e in zip(batch, entries):
            print(f"{prefix}{path}: {len(e)} instances in {seconds:.2f} s", flush=True)

    failures = 0
    for path, image in decoded([p for p, _ in items], args.workers, depth=max(args.workers, 2 * args.batch_size)):
        if isinstance(image, ImageError):
            print(f"error: {image}", file=sys.stderr)
            failures += 1
            continue
        for batch in batcher.add((path, image), *image.shape[:2]):
            run(batch)
    for batch in batcher.flush():
        run(batch)
    return failures


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="checkpoint: official AdelaiDet/mmdetection .pth or ours")
    p.add_argument("--config", help="preset name or AdelaiDet YAML; default: taken from the checkpoint")
    p.add_argument("--output", required=True, help="ONNX file to write (predict --weights FILE.onnx runs it)")
    p.add_argument("--dense-only", action="store_true",
                   help="write only the dense part (heads and mask features, any batch) instead of the whole "
                        "graph from the image to detections and masks; predict cannot run it")
    p.add_argument("--int8-calibration", metavar="DIR",
                   help="folder of the user's images: quantise the convolutions to INT8 (ONNX Runtime static "
                        "quantisation) calibrated on them")


def run_export(args: argparse.Namespace) -> int:
    existing_file(args.weights, "--weights")
    if not args.output.endswith(".onnx"):
        raise CLIError(f"--output {args.output}: the file name must end with .onnx")
    writable_file(args.output, "--output")
    calibration = []
    if args.int8_calibration:
        if args.dense_only:
            raise CLIError("--int8-calibration quantises the whole graph: drop --dense-only")
        existing_dir(args.int8_calibration, "--int8-calibration")
        calibration = _expand_inputs([args.int8_calibration])
    from .export import export_onnx
    from .predictor import load_model

    from .config_sources import load_config

    if (args.dense_only or calibration) and getattr(load_config(args.config or args.weights), "arch", "") == "sipmask":
        raise CLIError(f"{args.weights}: SipMask exports as the fp32 whole graph only (no --dense-only or "
                       "--int8-calibration)")
    model, cfg = load_model(args.weights, args.config)
    if not calibration:
        path = export_onnx(model.optimize_for_inference(), cfg, args.output, dense_only=args.dense_only)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")
        return 0
    import tempfile

    from .preprocess import read_image
    from .quantize import quantize_int8

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model.optimize_for_inference(), cfg, Path(tmp) / "fp32.onnx")
        path = quantize_int8(fp32, args.output, [read_image(p) for p in calibration])
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")
    return 0


@dataclass(frozen=True)
class Command:
    """A `condinst` subcommand: its help line, the function adding its flags and the one running it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], Any]
    run: Callable[[argparse.Namespace], int]


COMMAND_GROUP = "condinst.commands"
PREDICT = Command("segment images, write COCO results", add_predict_arguments, run_predict)
EXPORT = Command("write the model as one ONNX graph (image to detections and masks)", add_export_arguments,
                 run_export)


def _video_commands() -> dict[str, Command]:
    from .video import cli as video

    return {"video": Command("segment and track instances through videos, write YouTube-VIS results",
                             video.add_video_arguments, video.run_video),
            "evaluate-video": Command("YouTube-VIS AP/AR, ID switches and HOTA of a model or a results file",
                                      video.add_evaluate_arguments, video.run_evaluate_video)}


def commands() -> dict[str, Command]:
    """The library's commands, then those installed packages declare in the `condinst.commands` group."""
    found = {"predict": PREDICT, "export": EXPORT, **_video_commands()}
    for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        if ep.name not in found:
            found[ep.name] = ep.load()
    return found


def build_parser(available: dict[str, Command] | None = None, prog: str = "condinst") -> argparse.ArgumentParser:
    """The parser of `available` commands (default: every installed one)."""
    parser = OneLineParser(prog=prog, description="CondInst instance segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in (available or commands()).items():
        command.add_arguments(sub.add_parser(name, help=command.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    available = commands()
    argv = sys.argv[1:] if argv is None else argv
    if argv and not argv[0].startswith("-") and argv[0] not in available:
        print(f"error: unknown command {argv[0]!r} (this installation has: {', '.join(available)}; the training "
              "commands are registered when the project is installed, `pip install -e .`)", file=sys.stderr)
        return 2
    # The chosen command's parser only: `condinst predict` does not build the video and training parsers.
    chosen = {argv[0]: available[argv[0]]} if argv and argv[0] in available else available
    args = build_parser(chosen).parse_args(argv)
    try:
        return chosen[args.command].run(args)
    except Exception as exc:
        return reported(exc)


if __name__ == "__main__":
    sys.exit(main())
