"""Command line: `python -m condinst predict | train | evaluate` (also installed as `condinst`).

The library's own commands (`predict`) live here. Other packages add theirs through the entry-point
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

from .errors import UserError, run_reporting_errors
from .validate import (OneLineParser, check_device, existing_dir, existing_file, positive_int, probability,
                       writable_dir, writable_file)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class CLIError(UserError):
    """A user mistake on the command line: printed as one line, exit code 2."""


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="checkpoint: official AdelaiDet/mmdetection .pth or ours")
    p.add_argument("--config", help="preset name or AdelaiDet YAML; default: taken from the checkpoint")
    p.add_argument("--input", nargs="+", required=True, help="image files or folders of images")
    p.add_argument("--output", required=True, help="COCO results JSON to write")
    p.add_argument("--vis", help="folder for images with the detections drawn")
    p.add_argument("--score-threshold", type=probability, default=None,
                   help="keep detections scoring at least this (final score; default: keep all the model returns)")
    p.add_argument("--min-size", type=positive_int, help="test-time shortest edge (default: config, 800)")
    p.add_argument("--max-size", type=positive_int, help="test-time longest edge cap (default: config, 1333)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=("onnxruntime", "openvino"), default=None,
                   help="runtime of an exported .onnx --weights file (default: onnxruntime)")


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


def run_predict(args: argparse.Namespace) -> int:
    inputs = _expand_inputs(args.input)  # every check before the imports of torch and the model
    existing_file(args.weights, "--weights")
    if args.weights.endswith(".onnx") and args.config:
        raise CLIError(f"--config {args.config}: an ONNX file carries its own config; drop --config")
    check_backend(args.backend, args.weights)
    writable_file(args.output, "--output")
    if args.vis:
        writable_dir(args.vis, "--vis")
    check_device(args.device)
    from .coco import result_to_coco
    from .io import atomic_write_json
    from .predictor import Predictor
    from .preprocess import ImageError, read_image

    predictor = Predictor.from_weights(args.weights, args.config, device=args.device, min_size=args.min_size,
                                       max_size=args.max_size, backend=args.backend or "onnxruntime")
    k = predictor.cfg.fcos.num_classes
    names = [predictor.class_name(i) for i in range(k)]
    ids = [predictor.category_id(i) for i in range(k)]
    min_score = args.score_threshold or 0.0
    vis_dir = Path(args.vis) if args.vis else None
    results, failures = [], 0
    for path in inputs:
        try:
            image = read_image(path)
        except ImageError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
            continue
        start = time.perf_counter()
        result = predictor(image)[0]
        entries = result_to_coco(result, ids, file_name=path.name, class_names=names, min_score=min_score,
                                 decimals=3)
        results.extend(entries)
        print(f"{path}: {len(entries)} instances in {time.perf_counter() - start:.2f} s")
        if vis_dir is not None:
            from PIL import Image

            from .visualize import draw_result

            vis_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(draw_result(image, result, names, min_score)).save(vis_dir / (path.stem + ".png"))
    atomic_write_json(Path(args.output), results)
    print(f"wrote {len(results)} detections for {len(inputs) - failures} image(s) to {args.output}")
    return 1 if failures else 0


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


def commands() -> dict[str, Command]:
    """The library's commands, then those installed packages declare in the `condinst.commands` group."""
    found = {"predict": PREDICT, "export": EXPORT}
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
    args = build_parser(available).parse_args(argv)
    return run_reporting_errors(available[args.command].run, args)


if __name__ == "__main__":
    sys.exit(main())
