"""How long the hand waits: editor actions timed in Chromium, input event -> confirmed result on the canvas.

The app runs in this process on the bundled model with a fresh workspace holding the same photo twice at each
size (an 800x600 crop of a bundled sample and a 12-megapixel upscale of it, and each mirrored), so that "next image" has somewhere
to go. Playwright drives Debian's Chromium with the real mouse and keyboard; the page itself measures, with
`performance.now()` against the input event's own `timeStamp`:

    confirmed   input event -> the canvas holds the server's answer (a new scene `seq`) with every picture it
                needs decoded (the photo and each mask crop), i.e. what the annotator sees is the result;
    local       (strokes) pointer move -> the stroke is drawn on the canvas, before any answer (p50 / p95 / max
                over every move of every stroke). It has two parts, also reported: the browser's own wait before it
                hands the move to the page (Chromium delivers pointer moves aligned to the next frame: 0 to ~17 ms)
                and the editor's draw (`draw`: the handler's own time, from its start to the stroke on the canvas);
    server      the server's own time for that action: the Gradio handlers and the canvas's edit channel
                (wrapped in this process), summed (the channel's side-panel refresh included when it ended first).

Actions, repeated --repeats times at each size: select (click inside an instance), stroke (brush drag inside
the selected instance: the eraser, so that it always changes the mask), undo, polygon (four clicks + Enter), delete (the polygon's instance), refine click
(a positive click inside an object; Escape discards it, not timed), class change (dropdown option), class key
(its digit key), next image. The "video" size: a workspace item of a 12-frame 480x360 pan over the sample, and
"Frame >" clicked (back with "< Frame" from the last frame) until the canvas shows the new frame.

    python -m bench.editor_latency                       # 30 repeats at 800x600, 12 MP and the video
    python -m bench.editor_latency --repeats 5 --sizes 800x600
    # table + bench/results/editor_latency.json (p50 / p95 per action and size)
"""
from __future__ import annotations

import argparse
import os
import functools
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import REPO, RESULTS_DIR, environment, format_table, write_json

SAMPLE = REPO / "assets" / "samples" / "fruits_nuts_7.jpg"
SIZES = {"800x600": (800, 600), "12mp": (4000, 3000), "video": (480, 360)}  # video: a 12-frame pan, 480x360
VIDEO_FRAMES = 12
ACTIONS = ("select", "stroke", "undo", "polygon", "delete", "refine click", "class change", "class key", "next image",
           "video frame step")

# Resolves once the editor's canvas (its place on the page and its view transform) held still for 3 animation
# frames: clicks are placed from that transform (also tests/browserkit.canvas_point).
CANVAS_SETTLED_JS = """() => new Promise((done) => {
  const canvas = document.querySelector('#editor canvas'), st = window.condinstEditor.state;
  const look = () => { const r = canvas.getBoundingClientRect();
                       return [r.x, r.y, r.width, r.height, st.s, st.ox, st.oy].join(','); };
  let last = look(), same = 0;
  const tick = () => { const now = look(); same = now === last ? same + 1 : 0; last = now;
                       if (same >= 3) done(); else requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
})"""

# Page-side instrumentation: the last input event of each kind, and when the canvas showed each scene.
PROBE_JS = """() => {
  if (window.__lat) return;
  const lat = window.__lat = {input: {}, shown: 0, shownSeq: null, local: [], draw: [], dispatched: 0};
  const st = window.condinstEditor.state, canvas = document.querySelector('#editor canvas');
  for (const type of ['pointerdown', 'pointerup', 'keydown', 'click'])
    window.addEventListener(type, (ev) => { lat.input[type] = ev.timeStamp; }, true);  // before any page listener
  window.addEventListener('pointermove', () => { lat.dispatched = performance.now(); }, true);  // the page gets it
  canvas.addEventListener('pointermove', (ev) => {  // runs after the editor's own handler has drawn
    if (!st.stroke) return;
    const now = performance.now();
    lat.local.push(now - ev.timeStamp); lat.draw.push(now - lat.dispatched);
  });
  const ready = () => st.img && st.img.complete && Array.from(st.masks.values()).every((m) => m.img.complete);
  new MutationObserver(() => {
    const seq = canvas.dataset.seq;
    const check = () => { if (canvas.dataset.seq !== seq) return;
                          if (ready()) { lat.shown = performance.now(); lat.shownSeq = seq; }
                          else requestAnimationFrame(check); };
    check();
  }).observe(canvas, {attributes: true, attributeFilter: ['data-seq']});
}"""


class ServerClock:
    """Wraps every `on_*` handler of the app's Handlers (and the edit channel) so that their time can be summed
    per action."""

    def __init__(self):
        self.lock, self.calls = threading.Lock(), []

    def install(self, handlers_cls, channel_cls=None) -> None:
        for name in [n for n in vars(handlers_cls) if n.startswith("on_")]:
            setattr(handlers_cls, name, self._wrap(getattr(handlers_cls, name)))
        if channel_cls is not None:  # the canvas's edit channel (a server function, not a Gradio event)
            channel_cls.edit = self._wrap(channel_cls.edit)

    def _wrap(self, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.calls.append(time.perf_counter() - start)
        return timed

    def take(self) -> float:
        with self.lock:
            total, self.calls = sum(self.calls), []
        return total * 1000


def make_images(folder: Path, sizes: list[str]) -> dict[str, Path]:
    from PIL import Image

    photo = Image.open(SAMPLE).convert("RGB")
    paths = {}
    for name in sizes:
        w, h = SIZES[name]
        scale = max(w / photo.width, h / photo.height)
        resized = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BILINEAR)
        left, top = (resized.width - w) // 2, (resized.height - h) // 2
        for copy in (0, 1):  # two different photos (the second mirrored), so that "next image" has one to show
            path = folder / f"{name}-{copy}.jpg"
            crop = resized.crop((left, top, left + w, top + h))
            (crop.transpose(Image.FLIP_LEFT_RIGHT) if copy else crop).save(path, quality=92)
            paths.setdefault(name, []).append(path)
    return paths


def make_video(folder: Path) -> Path:
    """A short pan over the sample photo as an mp4 (bench.video.camera_frames): the video workspace's item."""
    from bench.video import camera_frames
    from condinst.video.render import VideoWriter

    w, h = SIZES["video"]
    path = folder / "pan.mp4"
    writer = VideoWriter(path, 10.0)
    for frame in camera_frames(VIDEO_FRAMES, (h, w), False, 0):
        writer.write(frame)
    writer.close()
    return path


def run_video(page: "Page", frame_ids: list[int], repeats: int, log) -> dict[str, list]:
    """`Frame >` clicked `repeats` times (back with `< Frame` at the last frame), each timed until the canvas
    shows the new frame."""
    samples = defaultdict(list)
    page.open(frame_ids[0])
    index, step = 0, +1
    for r in range(repeats):
        if not 0 <= index + step < len(frame_ids):
            step = -step
        index += step
        button = "#next-frame" if step > 0 else "#previous-frame"
        try:
            samples["video frame step"].append(page.timed(lambda: page.page.locator(button).click(), "click",
                                                          "s.image && s.image.id === arg", frame_ids[index]))
        except Stuck:
            samples["stuck"].append("video frame step")
            log(f"  repeat {r + 1}/{repeats}: the frame never showed (page limit): counted as stuck")
            page.open(frame_ids[index])
            continue
        log(f"  repeat {r + 1}/{repeats}")
    return samples


def interior_points(service, image_id: int) -> list[tuple[int, int, int]]:
    """(instance id, x, y) at the deepest pixel of each shown instance, in original pixels."""
    import cv2

    from app.view import DEFAULT_THRESHOLD

    points = []
    for inst in service.ws.instances(image_id):
        if not inst.shown_at(DEFAULT_THRESHOLD):
            continue
        dist = cv2.distanceTransform(np.pad(inst.mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
        y, x = np.unravel_index(int(dist.argmax()), dist.shape)
        points.append((inst.id, int(x), int(y)))
    return points


class Page:
    """The editor page with helpers that act as a person and wait for what the canvas shows."""

    def __init__(self, page, url: str, clock: ServerClock):
        self.page, self.url, self.clock = page, url, clock

    def open(self, image_id: int) -> None:
        self.page.goto(f"{self.url}?image={image_id}")
        self.page.wait_for_function("id => window.condinstEditor && window.condinstEditor.state.img && "
                                    "window.condinstEditor.state.img.complete && "
                                    "window.condinstEditor.state.scene.image.id === id", arg=image_id)
        self.page.evaluate(PROBE_JS)
        self.settled()

    def settled(self) -> None:
        """Wait until the canvas's place and view transform hold still for 3 animation frames (the page may refit
        the canvas once its side panels arrive, later on a loaded machine): a click placed from a transform read
        before that lands elsewhere (one 'stuck' select in 89 under load)."""
        self.page.evaluate(CANVAS_SETTLED_JS)
        self.box = self.page.locator("#editor canvas").bounding_box()

    def at(self, x: float, y: float) -> tuple[float, float]:
        """Page coordinates of original-image pixel (x, y)."""
        s, ox, oy, k = self.page.evaluate("() => { const s = window.condinstEditor.state; const i = s.scene.image; "
                                          "return [s.s, s.ox, s.oy, i.pw / i.width]; }")
        return self.box["x"] + ox + (x + 0.5) * k * s, self.box["y"] + oy + (y + 0.5) * k * s

    def tool(self, name: str) -> None:
        self.page.locator(f"#editor button[data-tool={name}]").click()

    def timed(self, act, event: str, until: str = "true", arg=None) -> dict:
        """Run `act`, then wait for a new scene shown after the last `event` input that satisfies `until`
        (a wait past the page's limit is a `Stuck` action: the page never showed the result)."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        self.clock.take()
        seq = self.page.evaluate("() => window.__lat.shownSeq")
        self.page.evaluate("() => { window.__lat.local = []; window.__lat.draw = []; }")
        act()
        try:
            self._wait(seq, event, until, arg)
        except PlaywrightTimeout:
            raise Stuck() from None
        confirmed, local, draw = self.page.evaluate(f"() => [window.__lat.shown - window.__lat.input['{event}'], "
                                                    "window.__lat.local, window.__lat.draw]")
        time.sleep(0.05)  # let the handler that produced this scene return before its time is read
        return {"confirmed": confirmed, "local": local, "draw": draw, "server": self.clock.take()}

    def _wait(self, seq, event: str, until: str, arg) -> None:
        self.page.wait_for_function(
            "([seq, ev, arg]) => { const l = window.__lat, s = window.condinstEditor.state.scene; "
            f"return l.shownSeq !== seq && l.input[ev] && l.shown > l.input[ev] && ({until}); }}",
            arg=[seq, event, arg])


class Stuck(Exception):
    """An action whose result the page did not show within its limit."""


def run_size(page: Page, service, image_ids: list[int], repeats: int, log) -> dict[str, list]:
    samples = defaultdict(list)
    for r in range(repeats):
        try:
            one_repeat(page, service, image_ids, r, samples)
        except Stuck:
            action = next((a for a in ACTIONS if len(samples[a]) <= r), "?")
            samples["stuck"].append(action)
            log(f"  repeat {r + 1}/{repeats}: {action} never showed its result (page limit): counted as stuck")
            continue
        log(f"  repeat {r + 1}/{repeats}")
    return samples


def one_repeat(page: Page, service, image_ids: list[int], r: int, samples) -> None:
    mouse, keyboard = page.page.mouse, page.page.keyboard
    first, second = image_ids
    page.open(first)
    points = interior_points(service, first)
    inst_id, x, y = points[r % len(points)]
    page.tool("select")
    samples["select"].append(page.timed(lambda: mouse.click(*page.at(x, y)), "pointerdown",
                                        "s.selected === arg", inst_id))
    page.tool("erase")  # inside the instance, so that the stroke always changes its mask

    def stroke():
        mouse.move(*page.at(x - 6, y - 6))
        mouse.down()
        for dx in range(-6, 7, 2):
            mouse.move(*page.at(x + dx, y + dx // 2))
        mouse.up()
    samples["stroke"].append(page.timed(stroke, "pointerup"))
    samples["undo"].append(page.timed(lambda: page.page.locator("#undo").click(), "click"))

    page.tool("polygon")
    corner = (20 + 7 * r % 60, 20 + 5 * r % 40)

    def polygon():
        for dx, dy in ((0, 0), (30, 0), (30, 24), (0, 24)):
            mouse.click(*page.at(corner[0] + dx, corner[1] + dy))
        keyboard.press("Enter")
    samples["polygon"].append(page.timed(polygon, "keydown", "s.selected !== null"))
    samples["delete"].append(page.timed(lambda: page.page.locator("#delete").click(), "click",
                                        "s.selected === null"))

    page.tool("refine")
    keyboard.press("Escape")  # a new object on top of the instance (else the first click would select it)
    samples["refine click"].append(page.timed(lambda: mouse.click(*page.at(x, y)), "pointerdown",
                                              "!!(s.refine && s.refine.png)"))
    page.timed(lambda: keyboard.press("Escape"), "keydown", "!s.refine")

    page.tool("select")
    page.timed(lambda: mouse.click(*page.at(x, y)), "pointerdown", "s.selected === arg", inst_id)
    choices = [name for name, _ in service.categories()]
    current = service.ws.get_instance(inst_id).category_id
    target = next(name for name, cid in service.categories() if cid != current)
    del choices

    def class_change():
        page.page.locator("#selected-class input").click()
        page.page.get_by_role("option", name=target, exact=True).click()
    samples["class change"].append(page.timed(class_change, "click"))
    page.timed(lambda: page.page.locator("#undo").click(), "click")
    # the same change by its digit key (app/web/keys.py: the n-th class of the list), through the edit channel
    classes = page.page.evaluate("() => window.condinstEditor.state.scene.classes")
    digit = str(next(k for k, (_, cid) in enumerate(classes, start=1) if cid != current))
    samples["class key"].append(page.timed(lambda: keyboard.press(digit), "keydown"))
    page.timed(lambda: keyboard.press("z"), "keydown")

    samples["next image"].append(page.timed(lambda: page.page.locator("#next").click(), "click",
                                            "s.image && s.image.id === arg", second))


def summarise(samples: dict[str, list[dict]], size: str) -> list[dict]:
    rows = []
    for action in ACTIONS:
        runs = samples.get(action, [])
        if not runs:
            continue
        confirmed = np.array([s["confirmed"] for s in runs])
        server = np.array([s["server"] for s in runs])
        local = [v for s in runs for v in s.get("local") or []]  # every move of every stroke
        draw = [v for s in runs for v in s.get("draw") or []]
        rows.append({"size": size, "action": action, "n": len(runs), "stuck": samples.get("stuck", []).count(action),
                     "p50_ms": float(np.percentile(confirmed, 50)), "p95_ms": float(np.percentile(confirmed, 95)),
                     "server_p50_ms": float(np.percentile(server, 50)),
                     "overhead_p50_ms": float(np.percentile(confirmed - server, 50)),
                     **({"local_p50_ms": float(np.percentile(local, 50)), "local_p95_ms": float(np.percentile(local, 95)),
                         "local_max_ms": float(max(local)), "local_moves": len(local),
                         "draw_p95_ms": float(np.percentile(draw, 95)), "draw_max_ms": float(max(draw))}
                        if local else {"local_max_ms": None})})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--repeats", type=int, default=30, help="repeats of every action per size (default 30)")
    parser.add_argument("--sizes", default="800x600,12mp,video", help="comma list of 800x600, 12mp, video")
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "editor_latency.json")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if bad := [s for s in sizes if s not in SIZES]:
        parser.error(f"unknown size {bad[0]!r}: choose from {', '.join(SIZES)}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(REPO / "tests"))
    from browserkit import CHROMIUM, CHROMIUM_ARGS

    from app.__main__ import launch
    from app.web.handlers import Handlers
    from app.service import Service
    from app.model.session import DEFAULT_WEIGHTS

    try:
        from app.web.edit_channel import EditChannel
    except ImportError:  # an app from before the edit channel
        EditChannel = None
    clock = ServerClock()
    clock.install(Handlers, EditChannel)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        images = make_images(Path(tmp), [s for s in sizes if s != "video"])
        service = Service.create(Path(tmp) / "ws", args.weights or DEFAULT_WEIGHTS)
        demo = launch(service, "127.0.0.1", args.port, block=False)
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(120_000)
        try:
            for size in sizes:
                print(f"{size}: {args.repeats} repeats", flush=True)
                on_page, log = Page(page, f"http://127.0.0.1:{args.port}/", clock), lambda text: print(text, flush=True)
                if size == "video":
                    service.images.add_files([make_video(Path(tmp))])
                    sequence = max(s.id for s in service.sequences.all())
                    samples = run_video(on_page, service.sequences.frame_ids(sequence), args.repeats, log)
                else:
                    ids = service.images.add_files(images[size]).image_ids
                    samples = run_size(on_page, service, ids, args.repeats, log)
                rows += summarise(samples, size)
        finally:
            browser.close()
            demo.close()
            service.close()
    print(format_table(rows, [("size", "size", "{}"), ("action", "action", "{}"), ("n", "n", "{}"), ("stuck", "stuck", "{}"),
                              ("p50 ms", "p50_ms", "{:.0f}"), ("p95 ms", "p95_ms", "{:.0f}"),
                              ("server p50", "server_p50_ms", "{:.0f}"), ("browser-server p50", "overhead_p50_ms", "{:.0f}"),
                              ("local p95", "local_p95_ms", "{:.1f}"), ("local max", "local_max_ms", "{:.1f}"),
                              ("draw max", "draw_max_ms", "{:.1f}")]))
    write_json(args.out, {"benchmark": "editor_latency", "environment": environment(torch.device("cpu")), "load_average": os.getloadavg(), "repeats": args.repeats,
                          "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
