"""Start CondInst Studio: ``python -m app`` (also the ``condinst-app`` console script).

    python -m app                                 # bundled model, http://127.0.0.1:7860
    python -m app --weights my.pth --port 7861 --auth anna:secret --workspace ~/fruit-ws
    python -m app --users team.users              # a team: name:role:hash lines (python -m app users add)
    python -m app export|import|users ...         # dataset and account commands, see app.commands
    python -m app ml-backend --port 9090          # Label Studio ML backend, see app.interop.ml_backend

One app process serves a workspace (`app.store.process_lock`); CLI export / import work alongside it.
SIGTERM and SIGINT (Ctrl+C) stop it cleanly: the server closes, the workspace is closed and its lock
released, so the next start has nothing to take over.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_FILE_SIZE = "50mb"


def build_parser() -> argparse.ArgumentParser:
    from app.service import DEFAULT_WEIGHTS
    from app.store.workspace import default_workspace_dir

    from condinst.validate import OneLineParser, positive_int

    parser = OneLineParser(prog="condinst-app", description="CondInst Studio: segment, explain, "
                           "correct and export instance masks in the browser")
    parser.add_argument("--weights", help=f"checkpoint to serve (default: the bundled {DEFAULT_WEIGHTS})")
    parser.add_argument("--config", help="preset name or YAML (default: taken from the checkpoint)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--auth", help="require a login, as user:password (one person)")
    parser.add_argument("--users", help="require a login: a users file of name:role:hash lines "
                        "(make it with 'python -m app users add')")
    parser.add_argument("--workspace", default=str(default_workspace_dir()),
                        help="workspace folder (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--fast", action="store_true",
                        help="the predictor's fast mode (channels_last, bf16 autocast and resizing on CUDA)")
    parser.add_argument("--backend", choices=("onnxruntime", "openvino"), default=None,
                        help="runtime of an exported .onnx --weights file (default onnxruntime)")
    parser.add_argument("--raw-masks", action="store_true",
                        help="keep the model's own masks (stride-4 logits pasted back); by default their boundaries "
                             "are snapped to the image's edges (condinst.snap) when images are segmented")
    parser.add_argument("--recover", action="store_true",
                        help="if the workspace database is damaged, move it aside and start a new one")
    parser.add_argument("--samples", help="folder of sample images to offer (default: assets/samples)")
    parser.add_argument("--max-file-size", default=DEFAULT_MAX_FILE_SIZE,
                        help="largest accepted upload (default %(default)s)")
    parser.add_argument("--max-video-frames", type=positive_int, default=300,
                        help="longest video the upload takes, in frames (default %(default)s)")
    parser.add_argument("--resolve-overlaps", type=overlap_iou, default=None, metavar="IOU",
                        help="resolve overlaps when images are segmented: of the model's masks overlapping by >= IOU "
                             "(e.g. 0.6) keep only the best score (default: keep all; the editor's key d does it "
                             "on demand)")
    return parser


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """'user:pass' -> ('user', 'pass'); SystemExit with a message if malformed."""
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SystemExit("error: --auth must look like user:password")
    return user, password


def port_number(text: str) -> int:
    from condinst.validate import positive_int

    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (1..65535), got {text!r}")
    return value


def overlap_iou(text: str) -> float:
    from condinst.validate import probability

    value = probability(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {text!r}")
    return value


def check_arguments(args: argparse.Namespace) -> Path:
    """Everything that can be checked before the model loads; returns the weights. SystemExit on a problem."""
    from condinst.errors import UserError
    from condinst.validate import check_device, existing_dir, writable_dir

    from condinst.cli import check_backend

    from app.model.session import resolve_weights

    weights = resolve_weights(args.weights)
    if args.users and args.auth:
        raise SystemExit("error: use --users FILE or --auth user:password, not both")
    try:
        if args.users:
            from app.team.accounts import check_permissions, read_users

            read_users(args.users)
            warning = check_permissions(args.users)
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
        check_backend(args.backend, str(weights))
        check_device(args.device)
        writable_dir(args.workspace, "--workspace")
        if args.samples:
            existing_dir(args.samples, "--samples")
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    return weights


def create_service(args: argparse.Namespace):
    """Model + workspace from the parsed arguments (SystemExit with a message on failure)."""
    weights = check_arguments(args)
    from app.store.process_lock import LockError, WorkspaceLock

    from app.commands import first_missing

    made = first_missing(Path(args.workspace).expanduser().resolve())  # what taking the lock creates
    try:  # before the model loads: a second app on the same workspace stops here
        args.lock = WorkspaceLock(args.workspace)
        stale = args.lock.acquire()
    except LockError as exc:
        raise SystemExit(f"error: {exc}") from None
    if stale:
        print(f"note: {stale}", file=sys.stderr)
    from app.service import Service
    from condinst.errors import user_message

    try:
        service = Service.create(args.workspace, weights, config=args.config, device=args.device,
                                 recover=args.recover, samples_dir=args.samples, fast=args.fast,
                                 backend=args.backend or "onnxruntime", max_video_frames=args.max_video_frames,
                                 snap_edges=not args.raw_masks)
    except Exception as exc:  # a checkpoint, config or ONNX file that does not load: one line (condinst.errors)
        message = user_message(exc)
        if message is None:
            raise
        args.lock.release()
        if made is not None:  # a failed start leaves nothing behind: the folder made for the lock goes again
            args.lock.path.unlink(missing_ok=True)
            remove_empty_folders(args.lock.path.parent, made)
        args.lock = None
        raise SystemExit(f"error: cannot load the model: {message}") from None
    service.images.overlap_iou = args.resolve_overlaps
    if service.workspace_error:
        print(f"warning: the workspace cannot be opened (the app starts anyway): {service.workspace_error}",
              file=sys.stderr)  # one line: the error says what to do (--recover or the page's 'Recover workspace')
    for notice in service.notices:
        print(f"note: {notice}", file=sys.stderr)
    return service


def remove_empty_folders(folder: Path, top: Path) -> None:
    """Remove ``folder`` and its parents up to ``top`` (included) while they are empty."""
    while True:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return
        folder = folder.parent


def launch(service, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, auth=None,
           max_file_size: str = DEFAULT_MAX_FILE_SIZE, block: bool = True):
    """Build and start the Gradio app; returns the Blocks (call ``.close()`` to stop it).

    `auth`: None (no login), ``(user, password)`` (one person, an admin) or `app.team.accounts.Accounts`.
    """
    from app.team.access import app_kwargs, login_function
    from app.team.accounts import Accounts
    from app.web.keys import hotkeys_js
    from app.web.team_page import FOCUS_JS
    from app.web.ui import CSS, build_ui

    if auth is not None and not isinstance(auth, Accounts):
        auth = Accounts.single(*auth)
    service.accounts = auth
    demo = build_ui(service)
    demo.queue(default_concurrency_limit=4, max_size=64)
    allowed = [str(service.workspace_dir / "exports")]
    demo.launch(server_name=host, server_port=port, auth=None if auth is None else login_function(auth),
                auth_message="Log in with your CondInst Studio account." if auth else None,
                max_file_size=max_file_size, allowed_paths=allowed, prevent_thread_lock=not block, ssr_mode=False,
                show_error=True, css=CSS, head=hotkeys_js() + FOCUS_JS, quiet=not block, app_kwargs=app_kwargs())
    return demo


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from app.commands import COMMANDS
    from app.interop.ml_backend.cli import COMMANDS as LABEL_STUDIO_COMMANDS

    if argv and argv[0] in LABEL_STUDIO_COMMANDS:  # python -m app ml-backend | ls-predictions (app.interop.ml_backend)
        from app.interop.ml_backend.cli import main as label_studio_main

        return label_studio_main(argv)
    if argv and argv[0] in COMMANDS:  # python -m app export|import ... (app.commands)
        from app.commands import main as command_main

        return command_main(argv)
    args = build_parser().parse_args(argv)
    auth = parse_auth(args.auth)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    previous = {sig: signal.signal(sig, handler) for sig, handler in
                ((signal.SIGTERM, stop_on_signal), (signal.SIGINT, signal.default_int_handler))}  # SIGTERM = Ctrl+C
    args.lock, service = None, None
    try:
        service = create_service(args)
        if args.users:
            from app.team.accounts import Accounts

            auth = Accounts.from_file(args.users)
        print(f"CondInst Studio on http://{args.host}:{args.port} - workspace {service.workspace_dir}", flush=True)
        launch(service, args.host, args.port, auth, args.max_file_size, block=True)  # returns on SIGINT / SIGTERM
    except KeyboardInterrupt:
        pass  # stopped before the server was up
    finally:
        for sig in previous:  # a second signal does not cut the shutdown short
            signal.signal(sig, signal.SIG_IGN)
        if service is not None:
            service.close()
        if args.lock is not None:
            args.lock.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("CondInst Studio stopped; the workspace was closed cleanly.", file=sys.stderr)
    return 0


def stop_on_signal(signum: int, frame) -> None:
    """SIGTERM handler: stop the app the way Ctrl+C does (the server loop closes on KeyboardInterrupt)."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
