"""Dataset and account commands for pipelines (no browser):

    python -m app export --workspace WS --format coco|yolo|png|ytvis --out DIR [--reviewed-only] [--split 0.2]
                         [--mask-format rle|polygon] [--exact-polygons] [--min-score 0.3] [--overwrite]
    python -m app import --workspace WS (--ann FILE_FOLDER_OR_ZIP [--images DIR] [--format F] | --yolo DIR|ZIP)
                         [--results R.json] [--skip-bad] [--map-category SRC=DST ...] [--duplicates skip|merge]
                         [--crowd auto|keep|editable] [--dry-run]
    python -m app qa --workspace WS --out report.json [--weights W] [--score 0.5] [--device cpu]
    python -m app users add NAME --role annotator|reviewer|admin --users FILE [--replace]   (password on stdin)

Every argument is checked before any work (before qa loads the model); an expected failure is one
``error:`` line (exit 2).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from condinst.errors import reported
from condinst.validate import ArgumentError, OneLineParser, existing_dir, existing_file, probability, writable_dir

COMMANDS = ("export", "import", "qa", "users")


def fraction(text: str) -> float:
    """A number strictly between 0 and 1 (the val share of a split)."""
    value = probability(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from app.view import DEFAULT_THRESHOLD
    from app.interop.formats import FORMATS

    parser = OneLineParser(prog="python -m app", description="CondInst Studio dataset commands")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    export = sub.add_parser("export", help="write the workspace as a dataset other tools read")
    export.add_argument("--workspace", required=True, help="workspace folder")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", required=True, help="output folder (its images/ etc. are replaced with --overwrite)")
    export.add_argument("--reviewed-only", action="store_true", help="only images marked reviewed")
    export.add_argument("--split", type=fraction, default=0.0, help="share of images for val (coco, yolo)")
    export.add_argument("--mask-format", choices=("rle", "polygon"), default="rle", help="COCO masks (default rle)")
    export.add_argument("--exact-polygons", action="store_true",
                        help="polygons as the exact pixel outline (default: simplified to within 1 px; coco, yolo)")
    export.add_argument("--min-score", type=probability, default=DEFAULT_THRESHOLD,
                        help="score threshold of unreviewed model instances (default %(default)s)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    imp = sub.add_parser("import", help="bring a dataset into the workspace as user labels (results: predictions)")
    imp.add_argument("--workspace", required=True, help="workspace folder (created if missing)")
    imp.add_argument("--ann", help="dataset JSON, folder or zip; the format is recognised (COCO, VIA, Label Studio, "
                                   "YOLO; CVAT/datumaro and Roboflow COCO zips)")
    imp.add_argument("--images", help="folder the JSON's file names are relative to (default: the JSON's folder; "
                                      "not with a zip)")
    from app.interop.format_detect import FORMATS as IMPORT_FORMATS
    imp.add_argument("--format", choices=IMPORT_FORMATS,
                     help="insist on one format (default: recognised from what --ann is)")
    imp.add_argument("--yolo", help="YOLO segmentation dataset folder or zip (data.yaml, images/, labels/)")
    imp.add_argument("--results", help="COCO results JSON with masks: stored as model predictions")
    imp.add_argument("--skip-bad", action="store_true", help="skip bad annotations and images instead of stopping")
    imp.add_argument("--map-category", action="append", metavar="SRC=DST",
                     help="import the source class SRC (name or id) as the workspace class DST (repeatable; "
                          "default: classes are matched by name, new names added)")
    imp.add_argument("--duplicates", choices=("skip", "merge"), default="skip",
                     help="an image whose bytes are stored already: leave it out with its labels (skip, default) "
                          "or add its labels to the stored image (merge)")
    imp.add_argument("--crowd", choices=("auto", "keep", "editable"), default="auto",
                     help="iscrowd masks: crowd regions (keep), editable instances (editable), or editable only when "
                          "the file is a CVAT/datumaro mask export, which marks every mask crowd (auto, default)")
    imp.add_argument("--dry-run", action="store_true",
                     help="check everything and print what the import would do (class mapping, new ids); write nothing")
    qa = sub.add_parser("qa", help="run the model over labelled images and list label/model disagreements")
    qa.add_argument("--workspace", required=True, help="workspace folder")
    qa.add_argument("--out", required=True, help="report JSON to write")
    qa.add_argument("--weights", help="checkpoint (default: the bundled model)")
    qa.add_argument("--score", type=probability, default=0.5, help="score of a confident prediction (default 0.5)")
    qa.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    users = sub.add_parser("users", help="accounts of a team (the app's --users file)")
    users_sub = users.add_subparsers(dest="action", required=True, parser_class=OneLineParser)
    add = users_sub.add_parser("add", help="add an account; its password is read from standard input")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("annotator", "reviewer", "admin"))
    add.add_argument("--users", required=True, help="users file (created if missing)")
    add.add_argument("--replace", action="store_true", help="change the password / role of an existing account")
    return parser


def existing_workspace(path: str) -> Path:
    from app.store.workspace import DB_FILE_NAME

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
    if args.exact_polygons and not (args.format == "yolo" or args.mask_format == "polygon"):
        raise ArgumentError("--exact-polygons applies to --format yolo or --mask-format polygon")
    if args.split and args.format == "ytvis":
        raise ArgumentError("--split applies to --format coco or yolo, not ytvis")
    entries = {"coco": ["images", "annotations"], "yolo": ["images", "labels", "data.yaml"],
               "png": ["images", "masks"], "ytvis": ["JPEGImages", "ytvis.json"]}[args.format]
    present = [name for name in entries if (out / name).exists()]
    if present and not args.overwrite:
        raise ArgumentError(f"--out {out}: {', '.join(present)} already exist; pass --overwrite to replace them")


def run_export(args: argparse.Namespace) -> str:
    from app.interop.export import export_coco
    from app.interop.formats import export_png, export_yolo
    from app.service import ThresholdedWorkspace
    from app.store.workspace import Workspace

    with Workspace.open(args.workspace) as workspace:
        view = ThresholdedWorkspace(workspace, args.min_score)
        if args.format == "coco":
            path = export_coco(view, args.out, args.reviewed_only, args.mask_format, args.overwrite, args.split,
                               args.exact_polygons)
        elif args.format == "ytvis":
            from app.interop.ytvis_export import export_ytvis

            path = export_ytvis(view, args.out, args.reviewed_only, args.overwrite)
        elif args.format == "yolo":
            path = export_yolo(view, args.out, args.reviewed_only, args.split, args.overwrite, args.exact_polygons)
        else:
            path = export_png(view, args.out, args.reviewed_only, args.overwrite)
    return f"exported {args.format} to {path}"


def check_import(args: argparse.Namespace) -> None:
    if not (args.ann or args.yolo or args.results):
        raise ArgumentError("nothing to import: give --ann (with --images, or a zip), --yolo or --results")
    if args.ann and args.yolo:
        raise ArgumentError("--ann and --yolo are two datasets; import them one at a time")
    import_options(args)  # a malformed --map-category
    if args.ann:
        if not Path(args.ann).is_dir():
            zipped = existing_file(args.ann, "--ann").suffix.lower() == ".zip"
            if zipped and args.images:
                raise ArgumentError("--images does not apply to a zip (its images are inside)")
    if args.images:
        if not args.ann:
            raise ArgumentError("--images goes with --ann")
        existing_dir(args.images, "--images")
    if args.yolo:
        path = Path(args.yolo)
        (existing_file if path.suffix.lower() == ".zip" else existing_dir)(args.yolo, "--yolo")
    if args.results:
        existing_file(args.results, "--results")
    if args.results and not (args.ann or args.yolo):
        existing_workspace(args.workspace)  # results go onto images already stored
    writable_dir(args.workspace, "--workspace")


def progress_printer(every_s: float = 2.0):
    """A `progress(stage, done, total)` that prints a line to stdout at most every ``every_s`` seconds
    (nothing for a quick import)."""
    last = [time.monotonic()]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            print(f"import: {stage} {done}/{total}", flush=True)
    return progress


def run_import(args: argparse.Namespace) -> str:
    """Import into the workspace; a workspace this command had to create is removed again when the import fails
    or is only a --dry-run (a failed start leaves nothing behind)."""
    from app.interop.imports import import_dataset
    from app.store.workspace import DB_FILE_NAME, Workspace

    root = Path(args.workspace).absolute()
    fresh = not (root / DB_FILE_NAME).exists()
    made = first_missing(root)  # the folder the workspace creates (None: it exists)
    before = set(root.iterdir()) if made is None else set()
    keep = False
    try:
        with Workspace.open(root) as workspace:
            summary = import_dataset(workspace, ann=args.ann, images=args.images, yolo=args.yolo,
                                     results=args.results, skip_bad=args.skip_bad, progress=progress_printer(),
                                     options=import_options(args), preview=args.dry_run, fmt=args.format).summary()
        keep = not args.dry_run
        return summary
    finally:
        if fresh and not keep:
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
            else:
                remove_new_entries(root, before)


def first_missing(path: Path) -> Path | None:
    """The highest folder of ``path`` (itself included) that does not exist yet: what creating it makes."""
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def remove_new_entries(root: Path, before: set[Path]) -> None:
    """Remove the entries of ``root`` that were not among ``before``."""
    for entry in set(root.iterdir()) - before:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def import_options(args: argparse.Namespace):
    """The `app.interop.imports.ImportOptions` of the command line (--map-category, --duplicates, --crowd)."""
    from app.interop.import_ids import parse_category_map
    from app.interop.imports import ImportOptions

    return ImportOptions(parse_category_map(args.map_category), args.duplicates, args.crowd)


def check_qa(args: argparse.Namespace) -> None:
    from app.model.session import DEFAULT_WEIGHTS
    from condinst.validate import check_device, writable_file

    existing_workspace(args.workspace)
    writable_file(args.out, "--out")
    if args.weights:
        existing_file(args.weights, "--weights")
    elif not DEFAULT_WEIGHTS.is_file():
        raise ArgumentError(f"the bundled default model {DEFAULT_WEIGHTS} is missing; pass --weights")
    check_device(args.device)


def run_qa_command(args: argparse.Namespace) -> str:
    from app.interop.qa import run_qa
    from app.model.session import DEFAULT_WEIGHTS, ModelSession
    from app.store.workspace import Workspace
    from condinst.io import atomic_write_json

    session = ModelSession.load(args.weights or DEFAULT_WEIGHTS, device=args.device, snap_edges=True)  # as the app
    with Workspace.open(args.workspace) as workspace:
        report = run_qa(workspace, session, args.score)
    atomic_write_json(args.out, report.to_dict(), indent=1)
    lines = [report.summary()] + [f"  {e.level} ({e.severity:.2f}) {e.kind} image {e.image_id} ({e.file_name})"
                                  f"{f' instance {e.instance_id}' if e.instance_id else ''}: {e.reason}"
                                  for e in report.entries[:10]]
    return "\n".join(lines + [f"report: {args.out}"])


def check_users(args: argparse.Namespace) -> None:
    from app.team.accounts import check_name

    check_name(args.name)


def run_users(args: argparse.Namespace) -> str:
    """The password comes from standard input (asked for, without echo, on a terminal)."""
    from app.team.accounts import add_user

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass(f"password for {args.name}: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    return add_user(args.users, args.name, args.role, password, replace=args.replace)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check, run = {"export": (check_export, run_export), "import": (check_import, run_import),
                  "qa": (check_qa, run_qa_command), "users": (check_users, run_users)}[args.command]
    try:
        check(args)
        print(run(args))
    except Exception as exc:
        return reported(exc)
    return 0
