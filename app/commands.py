"""Dataset commands for pipelines, no browser and no model:

    python -m app export --workspace WS --format coco|yolo|png --out DIR [--reviewed-only] [--split 0.2]
                         [--mask-format rle|polygon] [--min-score 0.3] [--overwrite]
    python -m app import --workspace WS --ann A.json --images DIR [--skip-bad]
    python -m app users add NAME --role annotator|reviewer|admin --users FILE [--replace]   (password on stdin)

Every argument is checked before any work; an expected failure is one ``error:`` line (exit 2).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from condinst.errors import UserError
from condinst.validate import ArgumentError, OneLineParser, existing_dir, existing_file, probability, writable_dir

COMMANDS = ("export", "import", "users")


def fraction(text: str) -> float:
    """A number strictly between 0 and 1 (the val share of a split)."""
    value = probability(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from app.actions import DEFAULT_THRESHOLD
    from app.formats import FORMATS

    parser = OneLineParser(prog="python -m app", description="CondInst Studio dataset commands")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    export = sub.add_parser("export", help="write the workspace as a dataset other tools read")
    export.add_argument("--workspace", required=True, help="workspace folder")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", required=True, help="output folder (its images/ etc. are replaced with --overwrite)")
    export.add_argument("--reviewed-only", action="store_true", help="only images marked reviewed")
    export.add_argument("--split", type=fraction, default=0.0, help="share of images for val (coco, yolo)")
    export.add_argument("--mask-format", choices=("rle", "polygon"), default="rle", help="COCO masks (default rle)")
    export.add_argument("--min-score", type=probability, default=DEFAULT_THRESHOLD,
                        help="score threshold of unreviewed model instances (default %(default)s)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    imp = sub.add_parser("import", help="bring a COCO instances dataset into the workspace as user labels")
    imp.add_argument("--workspace", required=True, help="workspace folder (created if missing)")
    imp.add_argument("--ann", required=True, help="COCO instances JSON")
    imp.add_argument("--images", required=True, help="folder the JSON's file_names are relative to")
    imp.add_argument("--skip-bad", action="store_true", help="skip bad annotations and images instead of stopping")
    users = sub.add_parser("users", help="accounts of a team (the app's --users file)")
    users_sub = users.add_subparsers(dest="action", required=True, parser_class=OneLineParser)
    add = users_sub.add_parser("add", help="add an account; its password is read from standard input")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("annotator", "reviewer", "admin"))
    add.add_argument("--users", required=True, help="users file (created if missing)")
    add.add_argument("--replace", action="store_true", help="change the password / role of an existing account")
    return parser


def existing_workspace(path: str) -> Path:
    from app.workspace import DB_FILE_NAME

    folder = existing_dir(path, "--workspace")
    if not (folder / DB_FILE_NAME).is_file():
        raise ArgumentError(f"--workspace {path}: not a workspace (no {DB_FILE_NAME})")
    return folder


def check_export(args: argparse.Namespace) -> None:
    """Everything about an export that can be checked before opening the workspace."""
    existing_workspace(args.workspace)
    out = writable_dir(args.out, "--out")
    if args.split and args.format == "png":
        raise ArgumentError("--split applies to --format coco or yolo, not png")
    if args.mask_format != "rle" and args.format != "coco":
        raise ArgumentError("--mask-format applies to --format coco only")
    entries = {"coco": ["images", "annotations"], "yolo": ["images", "labels", "data.yaml"],
               "png": ["images", "masks"]}[args.format]
    present = [name for name in entries if (out / name).exists()]
    if present and not args.overwrite:
        raise ArgumentError(f"--out {out}: {', '.join(present)} already exist; pass --overwrite to replace them")


def run_export(args: argparse.Namespace) -> str:
    from app.export import export_coco
    from app.formats import export_png, export_yolo
    from app.service import ThresholdedWorkspace
    from app.workspace import Workspace

    with Workspace.open(args.workspace) as workspace:
        view = ThresholdedWorkspace(workspace, args.min_score)
        if args.format == "coco":
            path = export_coco(view, args.out, args.reviewed_only, args.mask_format, args.overwrite, args.split)
        elif args.format == "yolo":
            path = export_yolo(view, args.out, args.reviewed_only, args.split, args.overwrite)
        else:
            path = export_png(view, args.out, args.reviewed_only, args.overwrite)
    return f"exported {args.format} to {path}"


def check_import(args: argparse.Namespace) -> None:
    existing_file(args.ann, "--ann")
    existing_dir(args.images, "--images")
    writable_dir(args.workspace, "--workspace")


def run_import(args: argparse.Namespace) -> str:
    from app.imports import import_coco
    from app.workspace import Workspace

    with Workspace.open(args.workspace) as workspace:
        return import_coco(workspace, args.ann, args.images, skip_bad=args.skip_bad).summary()


def check_users(args: argparse.Namespace) -> None:
    from app.accounts import check_name

    check_name(args.name)


def run_users(args: argparse.Namespace) -> str:
    """The password comes from standard input (asked for, without echo, on a terminal)."""
    from app.accounts import add_user

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass(f"password for {args.name}: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    return add_user(args.users, args.name, args.role, password, replace=args.replace)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check, run = {"export": (check_export, run_export), "import": (check_import, run_import),
                  "users": (check_users, run_users)}[args.command]
    try:
        check(args)
        print(run(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
