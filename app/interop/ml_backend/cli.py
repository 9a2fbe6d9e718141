"""Commands: the ML backend server and the COCO -> Label Studio converter.

    LABEL_STUDIO_API_KEY=... BASIC_AUTH_USER=ls BASIC_AUTH_PASS=... \\
    python -m app ml-backend [--weights W] --port 9090 --label-studio-url http://127.0.0.1:8080

    python -m app ls-predictions --coco export/annotations/instances_default.json \\
        --image-url '/data/local-files/?d=fruits/images/{file_name}' [--label-config project.xml] --out tasks.json

Secrets come from the environment, as in Label Studio's own ML backends: ``LABEL_STUDIO_API_KEY``
(the key the backend fetches images and exports with; ``LABEL_STUDIO_URL`` may give the address),
``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS`` (what Label Studio must send; required unless the backend
listens on a loopback address). Everything is checked before the model loads.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from condinst.errors import reported
from condinst.validate import (ArgumentError, OneLineParser, existing_file, positive_int, probability, writable_dir,
                               writable_file)

COMMANDS = ("ml-backend", "ls-predictions")
DEFAULT_PORT = 9090


def build_parser() -> argparse.ArgumentParser:
    from app.store.records import default_workspace_dir

    parser = OneLineParser(prog="python -m app", description="CondInst in Label Studio")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    ml = sub.add_parser("ml-backend", help="serve Label Studio's ML backend protocol (pre-annotations, "
                        "click-to-refine, training)")
    ml.add_argument("--weights", help="checkpoint to serve (default: the bundled model)")
    ml.add_argument("--config", help="preset name or YAML (default: taken from the checkpoint)")
    ml.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    ml.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help="port (default %(default)s)")
    ml.add_argument("--label-studio-url", default=os.environ.get("LABEL_STUDIO_URL", "http://127.0.0.1:8080"),
                    help="the Label Studio images and exports are fetched from (default: $LABEL_STUDIO_URL or "
                         "%(default)s)")
    ml.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    ml.add_argument("--raw-masks", action="store_true",
                    help="send the model's own masks (by default their boundaries are snapped to the image's edges, "
                         "as in the app)")
    ml.add_argument("--score-threshold", type=probability, default=0.5,
                    help="pre-annotate instances scoring at least this (default %(default)s)")
    ml.add_argument("--workdir", default=str(default_workspace_dir().parent / "ml-backend"),
                    help="folder of the training jobs (default %(default)s)")
    ml.add_argument("--train-iterations", type=positive_int, default=None,
                    help="iterations of a training job (default 300 on a GPU, 20 on the CPU)")
    ml.add_argument("--train-batch-size", type=positive_int, default=None, help="images per training step")
    ml.add_argument("--train-after", type=int, default=0,
                    help="also start training after this many new annotations (default 0: only on 'Start Training')")
    ml.add_argument("--max-batch", type=positive_int, default=4,
                    help="tasks predicted in one request; with more, Label Studio is made to ask for each task on its "
                         "own, within its own timeout (default %(default)s)")
    ml.add_argument("--max-request-mb", type=positive_int, default=64, help="largest request body (default 64)")
    conv = sub.add_parser("ls-predictions", help="COCO instances (e.g. our export) -> Label Studio tasks with "
                          "predictions, to import into a project")
    conv.add_argument("--coco", required=True, help="COCO instances JSON (annotations, or results with scores)")
    conv.add_argument("--image-url", required=True,
                      help="URL of each image in Label Studio, with {file_name}, e.g. "
                           "'/data/local-files/?d=fruits/images/{file_name}'")
    conv.add_argument("--label-config", help="the project's labeling config XML (default: BrushLabels 'label' "
                      "on Image 'image' with value $image)")
    conv.add_argument("--model-version", default="condinst-coco", help="the predictions' model_version")
    conv.add_argument("--out", required=True, help="tasks JSON to write")
    return parser


def secret_auth() -> tuple[str, str] | None:
    user, password = os.environ.get("BASIC_AUTH_USER", ""), os.environ.get("BASIC_AUTH_PASS", "")
    if bool(user) != bool(password):
        raise ArgumentError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
    return (user, password) if user else None


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_backend(args: argparse.Namespace) -> tuple[Path, tuple[str, str] | None]:
    """Every check before the model loads: weights, address, port, secrets, workdir, device."""
    from app.interop.ml_backend.client import check_base_url
    from app.model.session import resolve_weights
    from condinst.validate import check_device

    weights = resolve_weights(args.weights)
    if args.port > 65535:
        raise ArgumentError(f"--port {args.port}: must be a TCP port (1..65535)")
    check_base_url(args.label_studio_url)
    if not os.environ.get("LABEL_STUDIO_API_KEY", "").strip():
        raise ArgumentError("set LABEL_STUDIO_API_KEY to a Label Studio access token (Account & Settings): the "
                            "backend fetches task images from Label Studio with it")
    auth = secret_auth()
    if auth is None and not loopback(args.host):
        raise ArgumentError(f"--host {args.host} is reachable from other machines: set BASIC_AUTH_USER and "
                            "BASIC_AUTH_PASS (and the same under Basic Authentication in Label Studio's model settings)")
    if args.train_after < 0:
        raise ArgumentError("--train-after must be 0 or more")
    writable_dir(args.workdir, "--workdir")
    check_device(args.device)
    return weights, auth


def run_backend(args: argparse.Namespace) -> int:
    weights, auth = check_backend(args)
    import uvicorn

    from app.retrain.jobs import RetrainJobs
    from app.model.session import ModelSession
    from app.interop.ml_backend.adapter import CondInstBackend
    from app.interop.ml_backend.client import LabelStudio
    from app.interop.ml_backend.server import create_app
    from app.interop.ml_backend.trainer import Trainer
    from condinst.checkpoint import CheckpointError
    from condinst.config import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        session = ModelSession.load(weights, args.config, device=args.device, snap_edges=not args.raw_masks)
    except (CheckpointError, ConfigError) as exc:
        raise ArgumentError(f"cannot load the model: {exc}") from None
    studio = LabelStudio(args.label_studio_url, os.environ["LABEL_STUDIO_API_KEY"])
    device, iterations, batch = RetrainJobs.defaults(args.device)
    trainer = Trainer(Path(args.workdir) / "retrain", session, studio, args.train_iterations or iterations,
                      args.train_batch_size or batch, device)
    backend = CondInstBackend(session, studio, trainer, args.score_threshold, args.train_after, args.max_batch)
    app = create_app(backend, auth, max_body=args.max_request_mb * 2**20)
    print(f"CondInst ML backend on http://{args.host}:{args.port} - model_version {backend.model_version}, "
          f"images from {studio.url}, training jobs in {args.workdir}", flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            limit_concurrency=64, timeout_keep_alive=30)
    try:
        uvicorn.Server(config).run()
    finally:
        trainer.shutdown()
        studio.close()
    return 0


def run_predictions(args: argparse.Namespace) -> int:
    from app.interop.ml_backend.interop import coco_to_tasks
    from app.interop.ml_backend.label_config import parse_label_config
    from condinst.io import atomic_write_json
    from condinst.untrusted import read_json

    existing_file(args.coco, "--coco")
    writable_file(args.out, "--out")
    if "{file_name}" not in args.image_url:
        raise ArgumentError("--image-url must contain {file_name}")
    xml = (read_label_config(args.label_config) if args.label_config else
           '<View><Image name="image" value="$image"/><BrushLabels name="label" toName="image"><Label value="x"/>'
           '</BrushLabels></View>')
    config = parse_label_config(xml)
    coco = read_json(args.coco, "COCO")  # bounded nesting; every entry is checked by coco_to_tasks
    tasks = coco_to_tasks(coco, lambda name: args.image_url.replace("{file_name}", name), config, args.model_version,
                          name=args.coco)
    atomic_write_json(args.out, tasks)
    print(f"wrote {len(tasks)} tasks ({len(coco['annotations'])} masks as {config.kind} predictions of "
          f"{len(coco['images'])} images) to {args.out}")
    return 0


def read_label_config(path: str) -> str:
    """The text of a labeling config XML file; ArgumentError if it is too large or not UTF-8 text."""
    from app.interop.ml_backend.label_config import MAX_CONFIG_BYTES

    path = Path(existing_file(path, "--label-config"))
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ArgumentError(f"--label-config {path}: larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArgumentError(f"--label-config {path}: not UTF-8 text ({exc.reason})") from None


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"ml-backend": run_backend, "ls-predictions": run_predictions}[args.command](args)
    except SystemExit as exc:  # resolve_weights' one-line exits
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        raise
    except Exception as exc:
        return reported(exc)
