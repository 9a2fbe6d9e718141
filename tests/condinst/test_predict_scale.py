"""Prediction at scale: batches give the batch-size-1 results, torchrun shares the inputs and merges them
into one file (each image once), and a run killed mid-way resumes from its parts to the same results."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from condinst.checkpoint import save_checkpoint
from condinst.model import CondInst
from condinst.preprocess import ImageError
from condinst.scale import PartsError, PartStore, SizeBatcher, decoded, shard
from testutils import REPO, randomize_, scaled, tiny_config, wait_until

TORCHRUN = Path(sys.executable).with_name("torchrun")
SMALL = ["--min-size", "128", "--max-size", "256"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A tiny random model and 14 small photos of two padded sizes (plus one that is not an image)."""
    root = tmp_path_factory.mktemp("scale")
    cfg = tiny_config()
    weights = save_checkpoint(root / "m.pth", randomize_(CondInst(cfg), seed=0), cfg)
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(14):
        h, w = (96, 128) if i % 3 else (128, 96)
        img = np.broadcast_to(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None], (h, w, 3)).copy()
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y : y + h // 3, x : x + w // 3] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(photos / f"p{i:02d}.png")
    return {"root": root, "weights": weights, "photos": photos}


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def _predict(job, output, *extra, nproc: int = 1, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    launcher = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else \
        [sys.executable]
    argv = [*launcher, "-m", "condinst", "predict", "--weights", str(job["weights"]), "--input", str(job["photos"]),
            "--output", str(output), *SMALL, *extra]
    if popen:
        return subprocess.Popen(argv, cwd=REPO, env=_env(), **popen)
    proc = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=scaled(300))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _by_image(results: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in results:
        out.setdefault(r["file_name"], []).append(r)
    return out


@pytest.fixture(scope="module")
def reference(job):
    """One process, batch size 1: the results every other way of running must give."""
    out = job["root"] / "single.json"
    _predict(job, out)
    results = json.loads(out.read_text())
    assert len(_by_image(results)) == 14 and not PartStore(out).exists()
    return results


# ---- the pieces ------------------------------------------------------------------------------------

def test_shards_cover_every_item_once():
    items = list(range(11))
    shares = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(shares, [])) == items and [len(s) for s in shares] == [4, 4, 3]


def test_decoded_keeps_order_and_reports_bad_files(job, tmp_path):
    (tmp_path / "bad.png").write_text("not an image")
    paths = sorted(job["photos"].iterdir())[:5]
    paths.insert(2, tmp_path / "bad.png")
    for workers in (0, 3):
        out = list(decoded(paths, workers=workers, depth=2))
        assert [p for p, _ in out] == paths
        assert isinstance(out[2][1], ImageError) and all(isinstance(im, np.ndarray) for i, (_, im) in
                                                         enumerate(out) if i != 2)


def test_size_batcher_groups_one_padded_size_and_bounds_what_waits():
    batcher = SizeBatcher(3, min_size=128, max_size=256, divisibility=32)
    sizes = [(96, 128), (128, 96)] * 4 + [(50, 300)] * 2
    batches = []
    for i, (h, w) in enumerate(sizes):
        batches += batcher.add((i, h, w), h, w)
        assert sum(len(g) for g in batcher.groups.values()) <= 6
    batches += batcher.flush()
    assert sorted(i for b in batches for i, _, _ in b) == list(range(len(sizes)))
    for b in batches:
        assert len(b) <= 3 and len({batcher.padded_size(h, w) for _, h, w in b}) == 1


def test_part_store_refuses_another_runs_parts_and_merges_each_image_once(tmp_path):
    store = PartStore(tmp_path / "r.json")
    store.check({"a": 1})  # no folder yet: fine
    store.start({"a": 1})
    store.write(0, [("x", [{"v": 1}]), ("y", [])])
    store.write(1, [("z", [{"v": 3}, {"v": 4}])])
    store.write(1, [("x", [{"v": 9}])])  # a duplicate never doubles an image
    store.check({"a": 1})
    with pytest.raises(PartsError, match="a differ"):
        store.check({"a": 2})
    results, missing = store.merge(["z", "x", "y", "w"])
    assert len([r for r in results if r["v"] in (1, 9)]) == 1 and [r["v"] for r in results][:2] == [3, 4]
    assert missing == ["w"]
    assert not list(store.folder.glob("*.tmp"))
    (store.folder / "run.json").unlink()
    with pytest.raises(PartsError, match="not a parts folder"):
        store.check({"a": 1})


# ---- the command line --------------------------------------------------------------------------------

def _assert_same(a: list[dict], b: list[dict], exact: bool) -> None:
    if exact:
        assert a == b
        return
    ia, ib = _by_image(a), _by_image(b)
    assert list(ia) == list(ib)
    for name in ia:
        ra, rb = sorted(ia[name], key=lambda r: r["bbox"]), sorted(ib[name], key=lambda r: r["bbox"])
        assert [r["category_id"] for r in ra] == [r["category_id"] for r in rb], name
        assert np.abs(np.array([r["bbox"] for r in ra]) - np.array([r["bbox"] for r in rb])).max(initial=0) <= 2e-3
        assert np.abs(np.array([r["score"] for r in ra]) - np.array([r["score"] for r in rb])).max(initial=0) <= 1e-5


@pytest.mark.slow
def test_batches_give_the_batch_size_1_results(job, reference):
    out = job["root"] / "batched.json"
    proc = _predict(job, out, "--batch-size", "4", "--workers", "3")
    assert proc.stdout.count("instances in") == 14
    _assert_same(json.loads(out.read_text()), reference, exact=False)


@pytest.mark.slow
def test_two_processes_share_the_inputs_into_one_file(job, reference):
    out = job["root"] / "two.json"
    proc = _predict(job, out, nproc=2)
    assert proc.stdout.count("[rank 0]") == 7 and proc.stdout.count("[rank 1]") == 7
    _assert_same(json.loads(out.read_text()), reference, exact=True)
    assert not PartStore(out).exists()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_run_resumes_to_the_same_single_file(job, reference):
    out = job["root"] / "killed.json"
    store = PartStore(out)
    proc = _predict(job, out, nproc=2, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + scaled(240)
    while not list(store.folder.glob("part-*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    workers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher's group, as a crash or `kill -9` would
    proc.wait()
    assert len(workers) == 2 and not out.exists()
    wait_until(lambda: not any(_alive(w) for w in workers), 60, "the workers to die with their launcher (no orphans)",
               0.01)
    done = store.done()  # every part file there parses: a kill mid-write leaves at most a temporary file
    assert 1 <= len(done) < 14 and all(p.name.endswith(".tmp") for p in store.folder.glob(".part-*"))

    (store.folder / ".part-9-interrupted.json.x1y2.tmp").write_text('{"images": [[')  # as a kill mid-write leaves
    resumed = _predict(job, out, "--resume", nproc=2)
    assert f"resuming: {len(done)} of 14 image(s) already done" in resumed.stdout
    assert resumed.stdout.count("instances in") == 14 - len(done)  # what was done is not redone
    merged = json.loads(out.read_text())
    assert sorted(_by_image(merged)) == sorted(p.name for p in job["photos"].iterdir())
    _assert_same(merged, reference, exact=True)
    assert not store.exists()
