"""A hostile-input campaign against the commands people run: every case is a fresh process, judged from outside.

Each case builds a hostile input under a temporary folder (with the generators of tests/hostile/hostile_data.py)
and runs one real command on it, as a user would: `python -m app import` into a workspace that already holds
work, `python -m condinst train`, `python -m condinst predict`, `python -m condinst evaluate`. A case is judged:

    breach      a private file outside the dataset (the sentinel) shows up in the workspace or the output
    crash       the process died of a signal (segfault, OOM kill) or ran past its time limit
    lost        a file the workspace stored before the case is gone, or its database fails integrity_check
    traceback   "Traceback" on stderr (an expected failure must be one line)
    ok          anything else: refused with a clear line (exit 1 or 2), or done (exit 0)

    python tools/hostile_campaign.py [--only NAME_PART] [--timeout 120]   # table + bench/results/hostile_campaign.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "hostile")]

import hostile_data as hd  # noqa: E402

WEIGHTS = REPO / "assets" / "default_model" / "model.pth"
SAMPLE = REPO / "assets" / "samples" / "fruits_nuts_7.jpg"


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's shape), with one tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


# ---- the cases: name -> build(tmp, sentinel) -> argv (after `python -m`) ---------------------------------
def coco_case(data_fn, zip_: bool = False, links: dict | None = None):
    def build(tmp: Path, sentinel: Path):
        data = data_fn(tmp, sentinel)
        if zip_ or links:
            files = {} if isinstance(data, bytes) else {
                e["file_name"]: hd.write_png(tmp / "pics" / f"{k}.png", k).read_bytes()
                for k, e in enumerate(data["images"]) if isinstance(e.get("file_name"), str) and "/" not in e["file_name"]
                and "\x00" not in e["file_name"]}
            archive = hd.coco_zip(tmp / "data.zip", data, files, links or {})
            return ["--ann", str(archive)]
        if isinstance(data, bytes):
            (tmp / "ds" / "images").mkdir(parents=True, exist_ok=True)
            hd.write_png(tmp / "ds" / "images" / "good.png", 1)
            (tmp / "ds" / "ann.json").write_bytes(data)
            return ["--ann", str(tmp / "ds" / "ann.json"), "--images", str(tmp / "ds" / "images")]
        pictures = {e["file_name"]: k for k, e in enumerate(data["images"])  # names a file system can hold
                    if isinstance(e.get("file_name"), str) and e["file_name"] and "/" not in e["file_name"]
                    and "\x00" not in e["file_name"] and len(e["file_name"]) < 200}
        ann, images = hd.coco_folder(tmp / "ds", data, pictures)
        return ["--ann", str(ann), "--images", str(images)]
    return build


def one_ann(**kw):
    return lambda tmp, s: hd.good_coco(extra_annotations=[hd.annotation(2, 1, **kw)])


def one_image(image_id=2, file_name="b.png", h=hd.H, w=hd.W):
    return lambda tmp, s: hd.good_coco(extra_images=[hd.image_entry(image_id, file_name, h, w)])


BIG = 1e308
DATASETS = {
    "file_name ../ escape": lambda tmp, s: hd.good_coco([hd.image_entry(2, os.path.relpath(s, tmp / "ds" / "images"))]),
    "file_name absolute": lambda tmp, s: hd.good_coco([hd.image_entry(2, str(s))]),
    "file_name NUL byte": one_image(file_name="a\x00b.png"),
    "file_name 5000 chars": one_image(file_name="x" * 5000 + ".png"),
    "file_name not a string": one_image(file_name=["a.png"]),
    "file_name empty": one_image(file_name=""),
    "polygon 1e30": one_ann(segmentation=[[1e30, 1e30, 2e30, 1e30, 2e30, 2e30]]),
    "polygon 1e308": one_ann(segmentation=[[BIG, BIG, -BIG, BIG, BIG, -BIG]]),
    "polygon -1e308 mixed": one_ann(segmentation=[[10, 10, -BIG, 20, 30, 30]]),
    "polygon 2 points": one_ann(segmentation=[[10, 10, 20, 20]]),
    "polygon odd count": one_ann(segmentation=[[10, 10, 20, 20, 30]]),
    "polygon strings": one_ann(segmentation=[["10", "10", "20", "10", "20", "20"]]),
    "polygon 200k points": one_ann(segmentation=[[float(v % 50) for v in range(400_000)]]),
    "polygon nested lists": one_ann(segmentation=[[[10, 10], [20, 10], [20, 20]]]),
    "bbox 1e308": one_ann(bbox=[BIG, BIG, BIG, BIG]),
    "bbox negative size": one_ann(bbox=[10, 10, -5, -5]),
    "rle bad counts": one_ann(segmentation={"size": [hd.H, hd.W], "counts": "not rle ~~~"}),
    "rle short counts": one_ann(segmentation={"size": [hd.H, hd.W], "counts": "P"}),
    "rle huge size": one_ann(segmentation={"size": [10**9, 10**9], "counts": "0"}),
    "rle list negative": one_ann(segmentation={"size": [hd.H, hd.W], "counts": [-5, 10**12]}),
    "rle size mismatch": one_ann(segmentation={"size": [hd.H + 1, hd.W], "counts": [hd.H * hd.W + hd.W]}),
    "image id 2**63": one_image(image_id=2**63),
    "image id -1": one_image(image_id=-1),
    "image id 1.5": one_image(image_id=1.5),
    "image id bool": one_image(image_id=True),
    "annotation id 2**64": lambda tmp, s: hd.good_coco(extra_annotations=[hd.annotation(2**64, 1)]),
    "category id 0": lambda tmp, s: hd.coco([hd.image_entry(1, "good.png")], [hd.annotation(1, 1, category_id=0)],
                                            [{"id": 0, "name": "zero"}]),
    "category id 2**63": lambda tmp, s: hd.coco([hd.image_entry(1, "good.png")],
                                                [hd.annotation(1, 1, category_id=2**63)],
                                                [{"id": 2**63, "name": "huge"}]),
    "category name 100k chars": lambda tmp, s: hd.coco([hd.image_entry(1, "good.png")], [hd.annotation(1, 1)],
                                                       [{"id": 1, "name": "n" * 100_000}]),
    "image size 0": one_image(h=0, w=0),
    "image size 1e9": one_image(h=10**9, w=10**9),
    "image size nan": one_image(h=float("nan"), w=5),
    "json nested 100k": lambda tmp, s: hd.deep_json(100_000),
    "json nested 1k": lambda tmp, s: hd.deep_json(1_000),
    "json not json": lambda tmp, s: b"\x89PNG this is not json {",
    "json empty": lambda tmp, s: b"",
    "json top-level list": lambda tmp, s: b"[1, 2, 3]",
    "json huge int": lambda tmp, s: b'{"images": [{"id": 1' + b"0" * 5000 + b', "file_name": "good.png"}]}',
}
ZIPS = {
    "zip symlink member out": (lambda tmp, s: hd.good_coco([hd.image_entry(2, "link.png")]),
                               lambda tmp, s: {"images/default/link.png": str(s)}),
    "zip ../ member": (lambda tmp, s: hd.good_coco([hd.image_entry(2, "../../../../private/sentinel.png")]), None),
}
YOLO = {
    "yolo class nan": ["nan 0.1 0.1 0.5 0.1 0.5 0.5"],
    "yolo class inf": ["inf 0.1 0.1 0.5 0.1 0.5 0.5"],
    "yolo class 1e30": ["1e30 0.1 0.1 0.5 0.1 0.5 0.5"],
    "yolo class -1": ["-1 0.1 0.1 0.5 0.1 0.5 0.5"],
    "yolo coords 1e308": ["0 1e308 1e308 0.5 0.1 0.5 0.5"],
    "yolo coords nan": ["0 nan 0.1 0.5 0.1 0.5 0.5"],
    "yolo odd coords": ["0 0.1 0.1 0.5 0.1 0.5"],
    "yolo 1MB line": ["0 " + " ".join(["0.5"] * 200_000)],
    "yolo words": ["zero one two three four five six"],
}


def cases(tmp_root: Path, sentinel: Path):
    """(name, surface, argv builder) for every case."""
    for name, fn in DATASETS.items():
        yield name, "app import", coco_case(fn)
    for name, fn in list(DATASETS.items())[:12] + [(k, v) for k, v in DATASETS.items() if k.startswith("json")]:
        yield name, "condinst train", coco_case(fn)
    for name, (fn, links) in ZIPS.items():
        yield name, "app import", coco_case(fn, zip_=True, links=links(None, sentinel) if links else None)
    for name, rows in YOLO.items():
        def build(tmp, s, rows=rows):
            return ["--yolo", str(hd.yolo_folder(tmp / "yolo", {"a": rows}))]
        yield name, "app import", build

    def yolo_yaml_escape(tmp, s):
        root = hd.yolo_folder(tmp / "yolo", {"a": ["0 0.1 0.1 0.5 0.1 0.5 0.5"]})
        (root / "data.yaml").write_text(json.dumps({"names": ["thing"], "path": str(s.parent), "train": str(s.parent)}))
        return ["--yolo", str(root)]
    yield "yolo data.yaml path outside", "app import", yolo_yaml_escape

    images = {
        "predict image 0 bytes": b"",
        "predict image truncated jpeg": SAMPLE.read_bytes()[:2000],
        "predict image not an image": b"hello, I am text",
        "predict png claims 100k x 100k": png_header(100_000, 100_000),
        "predict png claims 1 x 10M": png_header(1, 10_000_000),
    }
    for name, content in images.items():
        def build(tmp, s, content=content):
            (tmp / "in.png").write_bytes(content)
            return ["--weights", str(WEIGHTS), "--input", str(tmp / "in.png"), "--output", str(tmp / "out.json")]
        yield name, "condinst predict", build
    weights = {
        "predict weights garbage .pth": b"\x00garbage" * 100,
        "predict weights empty .pth": b"",
        "predict weights garbage .onnx": b"\x08\x07garbage onnx" * 50,
        "predict weights empty .onnx": b"",
        "predict weights truncated .pth": WEIGHTS.read_bytes()[:100_000],
    }
    for name, content in weights.items():
        def build(tmp, s, content=content, suffix=name.split()[-1]):
            path = tmp / f"model{suffix}"
            path.write_bytes(content)
            return ["--weights", str(path), "--input", str(SAMPLE), "--output", str(tmp / "out.json")]
        yield name, "condinst predict", build
    for name, extra in {"predict --min-size 100000": ["--min-size", "100000", "--max-size", "100000"],
                        "predict --min-size nan": ["--min-size", "nan"],
                        "predict --score-threshold inf": ["--score-threshold", "inf"],
                        "predict output in a missing folder": None}.items():
        def build(tmp, s, extra=extra):
            if extra is None:
                return ["--weights", str(WEIGHTS), "--input", str(SAMPLE), "--output", str(tmp / "no" / "such" / "o.json")]
            return ["--weights", str(WEIGHTS), "--input", str(SAMPLE), "--output", str(tmp / "out.json"), *extra]
        yield name, "condinst predict", build


# ---- running and judging -------------------------------------------------------------------------------
def stored_workspace(root: Path, template: Path) -> list[Path]:
    shutil.copytree(template, root)
    return sorted(p for p in (root / "images").rglob("*") if p.is_file())


def make_template(folder: Path) -> Path:
    """A workspace holding two imported photos with labels (work that must survive every case)."""
    data = hd.coco([hd.image_entry(1, "w1.png"), hd.image_entry(2, "w2.png")], [hd.annotation(1, 1), hd.annotation(2, 2)])
    ann, images = hd.coco_folder(folder / "src", data)
    ws = folder / "template"
    subprocess.run([sys.executable, "-m", "app", "import", "--workspace", str(ws), "--ann", str(ann),
                    "--images", str(images)], cwd=REPO, check=True, capture_output=True)
    return ws


def run_case(name, surface, build, tmp: Path, template: Path, timeout: float) -> dict:
    sentinel, secret = hd.sentinel(tmp)
    ws, out = tmp / "ws", tmp / "out"
    kept = stored_workspace(ws, template) if surface == "app import" else []
    extra = build(tmp, sentinel)
    if surface == "app import":
        argv = ["app", "import", "--workspace", str(ws), *extra]
    elif surface == "condinst train":
        argv = ["condinst", "train", "--train-ann", extra[1], "--train-images", extra[3] if len(extra) > 3 else str(tmp),
                "--output-dir", str(out), "--max-iter", "1", "--device", "cpu", "--num-workers", "0"]
    else:
        argv = ["condinst", "predict", *extra]
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, errors="replace")
        code, stderr, stdout = proc.returncode, proc.stderr, proc.stdout
    except subprocess.TimeoutExpired:
        code, stderr, stdout = "timeout", "", ""
    seconds = time.perf_counter() - start
    verdict = "ok"
    if any(hd.holds_bytes(folder, secret) for folder in (ws, out) if folder.exists()):
        verdict = "breach"
    elif code == "timeout" or code < 0 or code >= 128:
        verdict = "crash"
    elif kept and (any(not p.is_file() for p in kept) or not integrity_ok(ws)):
        verdict = "lost"
    elif "Traceback" in stderr:
        verdict = "traceback"
    last = (stderr.strip().splitlines() or stdout.strip().splitlines() or [""])[-1]
    return {"case": name, "surface": surface, "exit": code, "verdict": verdict, "seconds": round(seconds, 1),
            "said": last[:160]}


def integrity_ok(ws: Path) -> bool:
    db = ws / "workspace.sqlite"
    if not db.is_file():
        return False
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds one case may take (default 180)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hostile_campaign.json")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        template = make_template(Path(tmp))
        for k, (name, surface, build) in enumerate(cases(Path(tmp), Path(tmp) / "s")):
            if args.only and args.only not in name:
                continue
            case_dir = Path(tmp) / f"case{k}"
            case_dir.mkdir()
            row = run_case(name, surface, build, case_dir, template, args.timeout)
            rows.append(row)
            print(f"{row['verdict']:9} {row['surface']:16} {name:34} exit {row['exit']!s:7} {row['seconds']:6}s  "
                  f"{row['said']}", flush=True)
            shutil.rmtree(case_dir, ignore_errors=True)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("ok", "breach", "crash", "lost", "traceback")}
    print(f"\n{len(rows)} cases: " + ", ".join(f"{v} {n}" for v, n in counts.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cases": rows, "counts": counts}, indent=2) + "\n")
    return 0 if counts["ok"] == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
