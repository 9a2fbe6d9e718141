"""Eight annotators on one app for 60 s (issue 12): errors, lost acknowledged edits, latency.

The app runs as its own process (``python -m app --users ...``) on a workspace of segmented photos;
eight logged-in gradio_client sessions (threads of this process) each work in a realistic mix on
their own image and on two shared ones:

    select 30%   /select_instance of a live instance of the current image
    stroke 30%   /stroke (brush, a short 3-point drag) on the selected instance
    class  15%   /set_class of the selected instance
    next   15%   /go_to_image: the next image of the person's own + shared images
    undo   10%   /undo (the person's own last edit of the image)
    poll         /poll every 3 s, as each open page does

A refusal the team features make on purpose (someone else edits the image: /take_over, then go on;
an instance changed since the page showed it: the fresh view comes back; nothing to undo; an undo
step dropped because someone changed its instance) is counted as "refused", not as an error. An
error is an exception or any other warning. The sessions ask for no server-drawn overlay picture
(``/set_picture(false)``), as the page's canvas editor does; they get the editor's scene.
Afterwards the workspace is checked: every acknowledged stroke that its author did not undo must
still be painted in its instance (a missing pixel is a lost acknowledged edit). None of these
actions runs the network, so the p95 is that of non-model actions.

    python -m bench.team_load                     # table + bench/results/team_load.json
    python -m bench.team_load --seconds 20 --clients 4
    python -m bench.team_load --pause 0.05 0.3    # a stress test: ~3 actions/s per person

The clients (gradio_client, in this process) share the machine with the app: on 2 cores they use
about twice the CPU the app does, so the figures are an upper bound of what browsers elsewhere see.
The JSON records the CPU seconds of the app and of the clients during the run.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.common import REPO, RESULTS_DIR, environment, format_table, write_json

DEFAULT_WEIGHTS = REPO / "assets" / "default_model" / "model.pth"
SHARED = Path(os.environ.get("CONDINST_SHARED", REPO.parent / "shared"))
FRUITS = SHARED / "datasets" / "fruits_nuts" / "data" / "images"
PASSWORD = "load-test-password"
MIX = (("select", 0.30), ("stroke", 0.30), ("class", 0.15), ("next", 0.15), ("undo", 0.10))
REFUSED = ("is editing this image", "after you last saw it", "Nothing to undo", "Cannot undo",
           "Select an instance first")
STATUS, SELECTED = 7, 4
POLL_SECONDS = 3.0  # app.web.team_page.POLL_SECONDS: every open page asks for others' changes this often


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(workspace: Path, weights: Path, images: list[Path], users: Path, clients: int) -> None:
    """Segmented images in the workspace and a users file with annotators ann0.. (model loads here once)."""
    from app.team.accounts import add_user
    from app.service import Service

    service = Service.create(workspace, weights)
    report = service.images.add_files(images)
    if report.errors:
        raise SystemExit(f"error: could not add the images: {report.errors}")
    service.close()
    for k in range(clients):
        add_user(users, f"ann{k}", "annotator", PASSWORD)


def start_app(workspace: Path, weights: Path, users: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    process = subprocess.Popen([sys.executable, "-m", "app", "--users", str(users), "--workspace", str(workspace),
                                "--weights", str(weights), "--port", str(port)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"error: the app did not start: {process.stderr.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("error: the app did not listen within 180 s")


class Annotator:
    """One person: own image + shared images, the mix above, a log of acknowledged strokes and undos."""

    def __init__(self, k: int, url: str, ws, own: int, shared: list[int], seed: int,
                 pause: tuple[float, float] = (0.5, 1.5)):
        from gradio_client import Client

        self.name = f"ann{k}"
        self.client = Client(url, auth=(self.name, PASSWORD), verbose=False, analytics_enabled=False,
                             download_files=False)
        self.rng = random.Random(seed)
        self.ws, self.images, self.position = ws, [own] + shared, 0
        self.latency: dict[str, list[float]] = {name: [] for name, _ in MIX + (("take_over", 0), ("poll", 0))}
        self.errors: list[str] = []
        self.refused = 0
        self.edits: list[dict] = []  # acknowledged edits in order: {"kind", "image", "instance", "points"}
        self.selected: int | None = None
        self.pause = pause

    def call(self, kind: str, *args, api_name: str):
        start = time.perf_counter()
        out = self.client.predict(*args, api_name=api_name)
        self.latency[kind].append((time.perf_counter() - start) * 1000.0)
        status = str(out[STATUS] or "")
        if status.startswith("**Not done:**"):
            if any(reason in status for reason in REFUSED):
                self.refused += 1
                if "is editing this image" in status:
                    self.call("take_over", api_name="/take_over")
            else:
                self.errors.append(f"{self.name} {kind}: {status}")
            return out, False
        return out, True

    def image(self) -> int:
        return self.images[self.position % len(self.images)]

    def step(self) -> None:
        kind = self.rng.choices([name for name, _ in MIX], [w for _, w in MIX])[0]
        image_id = self.image()
        if kind == "next":
            self.position += 1
            out, _ = self.call("next", self.image(), api_name="/go_to_image")
            self.selected = None
            return
        if kind == "select" or self.selected is None:
            live = self.ws.instances(image_id)
            if not live:
                return
            target = self.rng.choice(live).id
            out, ok = self.call("select", target, api_name="/select_instance")
            self.selected = target if ok else None
            return
        if kind == "stroke":
            inst = self.ws.get_instance(self.selected)
            x, y, w, h = (int(v) for v in inst.bbox)
            px = min(inst.width - 1, x + self.rng.randint(0, max(w, 1)))
            py = min(inst.height - 1, y + self.rng.randint(0, max(h, 1)))
            points = [[px, py], [min(inst.width - 1, px + 6), py], [min(inst.width - 1, px + 6),
                                                                     min(inst.height - 1, py + 4)]]
            out, ok = self.call("stroke", "brush", json.dumps(points), 7, api_name="/stroke")
            if ok and str(out[STATUS]).startswith("Painted"):
                self.edits.append({"kind": "stroke", "image": image_id, "instance": self.selected, "points": points})
            elif not ok:
                self.selected = out[SELECTED] if isinstance(out[SELECTED], (int, float)) else None
            return
        if kind == "class":  # another class than it has (an unchanged class is no edit and no undo step)
            current = self.ws.get_instance(self.selected).category_id
            out, ok = self.call("class", self.rng.choice([c for c in (1, 2, 3) if c != current]), api_name="/set_class")
            if ok and "is now" in str(out[STATUS]):
                self.edits.append({"kind": "class", "image": image_id, "instance": self.selected})
            return
        out, ok = self.call("undo", api_name="/undo")
        status = str(out[STATUS])
        if ok and status.startswith("Undid"):
            self.undone(image_id)
        elif "Cannot undo" in status:  # that step stays applied (someone changed its instance since)
            self.dropped(image_id)

    def _last(self, image_id: int) -> dict | None:
        return next((e for e in reversed(self.edits) if e["image"] == image_id and not e.get("undone")
                     and not e.get("dropped")), None)

    def undone(self, image_id: int) -> None:
        entry = self._last(image_id)
        if entry is not None:
            entry["undone"] = True

    def dropped(self, image_id: int) -> None:
        entry = self._last(image_id)
        if entry is not None:
            entry["dropped"] = True

    def run(self, seconds: float) -> None:
        self.client.predict(False, api_name="/set_picture")  # as the page's canvas editor: no overlay picture
        self.call("next", self.image(), api_name="/go_to_image")
        end = time.monotonic() + seconds
        polled = time.monotonic()
        while time.monotonic() < end:
            try:
                if time.monotonic() - polled >= POLL_SECONDS:  # the page's timer
                    polled = time.monotonic()
                    self.call("poll", api_name="/poll")
                self.step()
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                self.errors.append(f"{self.name}: {type(exc).__name__}: {str(exc)[:200]}")
                self.selected = None
            time.sleep(self.rng.uniform(*self.pause))  # a person's pause between actions


def lost_strokes(ws, people: list[Annotator]) -> int:
    """Acknowledged strokes, not undone by their author, whose first point is no longer in the instance."""
    lost = 0
    for person in people:
        for edit in person.edits:
            if edit["kind"] != "stroke" or edit.get("undone"):
                continue
            inst = ws.get_instance(edit["instance"])
            x, y = edit["points"][0]
            if inst.deleted or not inst.mask[y, x]:
                lost += 1
    return lost


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), to tell server work from client work."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=Path, default=FRUITS, help="folder of photos (fruits_nuts by default)")
    parser.add_argument("--pause", type=float, nargs=2, default=(0.5, 1.5), metavar=("MIN", "MAX"),
                        help="seconds a person pauses between actions (default 0.5 1.5; 0.05 0.3 is a stress test)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "team_load.json")
    args = parser.parse_args(argv)
    photos = sorted(args.images.glob("*.jpg"))[: args.clients + 2]
    if len(photos) < args.clients + 2:
        raise SystemExit(f"error: --images {args.images}: needs {args.clients + 2} .jpg photos")
    from app.store.workspace import Workspace

    tmp = Path(tempfile.mkdtemp(prefix="team-load-"))
    workspace, users, port = tmp / "ws", tmp / "team.users", free_port()
    app = None
    try:
        prepare(workspace, args.weights, photos, users, args.clients)
        app = start_app(workspace, args.weights, users, port)
        ws = Workspace.open(workspace)  # the bench's own read connection (WAL: reads alongside the app)
        ids = [img.id for img in ws.list_images()]
        shared = ids[args.clients:args.clients + 2]
        people = [Annotator(k, f"http://127.0.0.1:{port}/", ws, ids[k], shared, seed=k, pause=tuple(args.pause))
                  for k in range(args.clients)]
        threads = [threading.Thread(target=p.run, args=(args.seconds,)) for p in people]
        server_cpu, client_cpu = cpu_seconds(app.pid), time.process_time()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        server_cpu, client_cpu = cpu_seconds(app.pid) - server_cpu, time.process_time() - client_cpu
        lost = lost_strokes(ws, people)
        ws.close()
    finally:
        if app is not None:
            app.terminate()
            app.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for kind in [name for name, _ in MIX] + ["take_over", "poll"]:
        times = [t for p in people for t in p.latency[kind]]
        rows.append({"action": kind, "count": len(times), "p50_ms": percentile(times, 50),
                     "p95_ms": percentile(times, 95), "max_ms": max(times) if times else None})
    everything = [t for p in people for times in p.latency.values() for t in times]
    rows.append({"action": "all (non-model)", "count": len(everything), "p50_ms": percentile(everything, 50),
                 "p95_ms": percentile(everything, 95), "max_ms": max(everything) if everything else None})
    errors = [e for p in people for e in p.errors]
    acknowledged = sum(1 for p in people for e in p.edits)
    print(format_table(rows, [("action", "action", "{}"), ("count", "count", "{}"), ("p50 ms", "p50_ms", "{:.0f}"),
                              ("p95 ms", "p95_ms", "{:.0f}"), ("max ms", "max_ms", "{:.0f}")]))
    load = os.getloadavg()[0]
    print(f"\n{args.clients} clients x {args.seconds:.0f} s: {len(everything)} actions, {acknowledged} acknowledged "
          f"edits, {sum(p.refused for p in people)} refused on purpose (presence / stale / nothing to undo), "
          f"{len(errors)} errors, {lost} lost acknowledged edits; p95 of all actions "
          f"{percentile(everything, 95) or 0:.0f} ms (goal <= 500 ms), on {os.cpu_count()} cores, "
          f"load average {load:.1f} at the end")
    print(f"CPU during the run: app process {server_cpu:.1f} s ({1000 * server_cpu / max(len(everything), 1):.0f} ms "
          f"per action), the {args.clients} clients {client_cpu:.1f} s, of {args.seconds * os.cpu_count():.0f} "
          "core-seconds")
    for error in errors[:10]:
        print("  error:", error)
    write_json(args.out, {"benchmark": "team_load", "environment": environment(__import__("torch").device("cpu")),
                          "settings": {"clients": args.clients, "seconds": args.seconds, "mix": dict(MIX),
                                       "pause_s": list(args.pause)},
                          "rows": rows, "errors": errors, "error_count": len(errors), "lost_acknowledged_edits": lost,
                          "acknowledged_edits": acknowledged, "refused": sum(p.refused for p in people),
                          "p95_ms": percentile(everything, 95), "load_average_1min_at_end": load,
                          "server_cpu_s": server_cpu, "client_cpu_s": client_cpu})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
