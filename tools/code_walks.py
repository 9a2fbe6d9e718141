"""The three walks of the app redesign issue, measured by running them: which of the project's files an action passes
through, in the order it enters them, and whether it ever calls back into a file that is still waiting on a call it
made (A -> B -> A: a file "entered twice").

    python tools/code_walks.py                 # table; --json FILE also writes the walks
    python tools/code_walks.py --show upload   # the files of one walk, in order

Walks (each run once to warm imports and caches, then traced on its second run, in this process, on the bundled model):
    upload   a photo given to the app (`ImageLibrary.add_files`, what the page's upload calls) -> its masks stored
    stroke   a brush stroke sent by the canvas (the edit channel's `edit`) -> the instance's row in SQLite, and the
             channel's answer to the canvas
    predict  `condinst predict` on one photo -> the COCO results JSON

A file is counted when a call enters one of its functions from another file (`sys.setprofile`; only the project's
own packages app/, condinst/, training/ are counted, and module bodies run by an import are not). "Re-entered"
lists the files called again while one of their own frames lower on the stack is waiting on the call that led
there: a call back into a layer the walk already passed through.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PACKAGES = tuple(str(REPO / name) + "/" for name in ("app", "condinst", "training"))
PHOTO = REPO / "assets" / "samples" / "fruits_nuts_7.jpg"


class Walk:
    """Records, for the calls made inside ``with walk:``, the project files entered and the call-backs."""

    def __init__(self):
        self.files: list[str] = []  # in the order first entered
        self.entries: dict[str, str] = {}  # file -> the first call that entered it ("caller.py:fn -> fn")
        self.reentered: dict[str, list[str]] = {}  # file -> the chain of files that led back into it (first seen)
        self._stack: list[tuple[int, str]] = []  # (id of frame, file) of the project's frames now running
        self._names: list[str] = []  # their functions' names

    def _profile(self, frame, event, arg):
        if event not in ("call", "return"):
            return
        path = frame.f_code.co_filename
        if not path.startswith(PACKAGES) or frame.f_code.co_name == "<module>":
            return
        name = str(Path(path).relative_to(REPO))
        if event == "return":
            if self._stack and self._stack[-1][0] == id(frame):
                self._stack.pop()
                self._names.pop()
            return
        chain = [f for _, f in self._stack]
        if chain and chain[-1] != name:  # entered from another file
            if name in chain and name not in self.reentered:
                start = len(chain) - 1 - chain[::-1].index(name)
                self.reentered[name] = _collapse(chain[start:]) + [name]
        if name not in self.files:
            self.files.append(name)
            caller = f"{chain[-1]}:{self._names[-1]}" if chain else "(start)"
            self.entries[name] = f"{caller} -> {frame.f_code.co_name}"
        self._names.append(frame.f_code.co_name)
        self._stack.append((id(frame), name))

    def __enter__(self):
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)


def _collapse(chain: list[str]) -> list[str]:
    return [f for i, f in enumerate(chain) if i == 0 or chain[i - 1] != f]


def traced(run) -> Walk:
    run()  # imports, caches and the model's first call happen outside the walk
    walk = Walk()
    with walk:
        run()
    return walk


def upload_walk(tmp: Path):
    from app.model.session import DEFAULT_WEIGHTS
    from app.service import Service

    service = Service.create(tmp / "ws-upload", DEFAULT_WEIGHTS)
    copies = iter(range(10))

    def run():  # a new file each time, so the second run stores a new image as the first did
        path = tmp / f"upload-{next(copies)}.jpg"
        path.write_bytes(PHOTO.read_bytes()[:-2] + bytes([next(copies) % 250, 0xD9]))
        service.images.add_files([path])
    return service, run


def stroke_walk(tmp: Path):
    import gradio as gr
    import numpy as np

    from app.__main__ import launch
    from app.model.session import DEFAULT_WEIGHTS
    from app.service import Service
    from app.view import View

    service = Service.create(tmp / "ws-stroke", DEFAULT_WEIGHTS)
    image = service.images.add_files([PHOTO]).image_ids[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(service, "127.0.0.1", port, block=False)
    edit = next(fn for block in demo.blocks.values() for fn in getattr(block, "server_fns", []))
    state = next(b for b in demo.blocks.values() if isinstance(b, gr.State))
    target = max(service.ws.instances(image), key=lambda inst: inst.area)
    ys, xs = np.nonzero(target.mask)
    x, y = int(xs[len(xs) // 2]), int(ys[len(ys) // 2])
    demo.state_holder["walk"][state._id] = View(image_id=image, selected=target.id)
    request = gr.Request(session_hash="walk")
    strokes = iter(range(10))

    def run():
        dx = next(strokes)
        answer = edit({"action": "stroke", "tool": "erase", "points": [[x - 6 + dx, y], [x + 6 + dx, y]], "width": 3},
                      request)
        if not answer.get("ok"):
            raise SystemExit(f"the stroke was refused: {answer.get('message')}")
    return (service, demo), run


def predict_walk(tmp: Path):
    from app.model.session import DEFAULT_WEIGHTS
    from condinst.cli import main as condinst_main

    outputs = iter(range(10))

    def run():
        out = tmp / f"predict-{next(outputs)}.json"
        code = condinst_main(["predict", "--weights", str(DEFAULT_WEIGHTS), "--input", str(PHOTO), "--output", str(out),
                              "--workers", "0"])
        if code not in (0, None) or not out.exists():
            raise SystemExit(f"condinst predict failed ({code})")
    return None, run


WALKS = {"upload": upload_walk, "stroke": stroke_walk, "predict": predict_walk}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--walks", default=",".join(WALKS), help=f"comma list of {', '.join(WALKS)}")
    parser.add_argument("--show", choices=list(WALKS), help="print the files of this walk in order")
    parser.add_argument("--json", type=Path, help="also write the walks to this JSON file")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.walks.split(",") if n.strip()]
    if bad := [n for n in names if n not in WALKS]:
        parser.error(f"unknown walk {bad[0]!r}: choose from {', '.join(WALKS)}")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json: folder {args.json.parent} does not exist")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            keep, run = WALKS[name](Path(tmp))
            walk = traced(run)
            results[name] = {"files": walk.files, "entries": walk.entries, "reentered": walk.reentered}
            if isinstance(keep, tuple):
                keep[1].close()
                keep[0].close()
            elif keep is not None:
                keep.close()
    print(f"{'walk':<8} {'files':>5} {'re-entered':>10}  re-entered files")
    for name, r in results.items():
        print(f"{name:<8} {len(r['files']):>5} {len(r['reentered']):>10}  {', '.join(r['reentered']) or '-'}")
    if args.show and args.show in results:
        print(f"\n{args.show}:")
        for n, f in enumerate(results[args.show]["files"], 1):
            print(f"  {n:>2} {f:<36} {results[args.show]['entries'][f]}")
        for f, chain in results[args.show]["reentered"].items():
            print(f"  re-entered {f}: {' -> '.join(chain)}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
