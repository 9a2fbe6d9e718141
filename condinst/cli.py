"""Command line: `python -m condinst predict | train | evaluate` (also installed as `condinst`)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import UserError, run_reporting_errors
from .validate import (OneLineParser, check_device, existing_file, positive_int, probability, writable_dir,
                       writable_file)

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


def run_predict(args: argparse.Namespace) -> int:
    inputs = _expand_inputs(args.input)  # every check before the imports of torch and the model
    existing_file(args.weights, "--weights")
    writable_file(args.output, "--output")
    if args.vis:
        writable_dir(args.vis, "--vis")
    check_device(args.device)
    from .coco import result_to_coco
    from .io import atomic_write_json
    from .predictor import Predictor
    from .preprocess import ImageError, read_image

    predictor = Predictor.from_weights(args.weights, args.config, device=args.device,
                                       min_size=args.min_size, max_size=args.max_size)
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


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="condinst", description="CondInst instance segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    add_predict_arguments(sub.add_parser("predict", help="segment images, write COCO results"))
    try:
        from training.cli import add_evaluate_arguments, add_train_arguments
    except ImportError:
        pass
    else:
        add_train_arguments(sub.add_parser("train", help="train or fine-tune on a COCO dataset"))
        add_evaluate_arguments(sub.add_parser("evaluate", help="COCO box and mask AP of a checkpoint"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "predict":
        return run_reporting_errors(run_predict, args)
    from training.cli import run_evaluate, run_train

    return run_train(args) if args.command == "train" else run_evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
