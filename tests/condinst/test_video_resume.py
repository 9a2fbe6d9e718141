"""`python -m condinst video` with bounded memory and --resume: masks spooled to disk as the frames come,
finished videos kept as parts, the results file streamed from them; a killed run resumes to the file an
uninterrupted run writes."""
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
import torch
from PIL import Image
from pycocotools import mask as mask_utils

import videokit
from condinst.cli import build_parser, main
from condinst.postprocess import ImageResult
from condinst.video.parts import VideoParts
from condinst.video.vis_results import VideoTracks
from testutils import REPO, scaled

WEIGHTS = str(REPO / "assets" / "default_model" / "model.pth")


def _frame_result(rng, k: int, size=(24, 32)) -> ImageResult:
    masks = torch.from_numpy(rng.random((k, *size)) < 0.3)
    masks[0] = False  # an empty mask: absent from its track
    scores, classes = torch.from_numpy(rng.random(k)).float(), torch.from_numpy(rng.integers(0, 3, k))
    return ImageResult(torch.zeros(k, 4), scores, classes, masks, None, size, size)


def test_spooled_tracks_give_the_in_memory_results_and_leave_no_file(tmp_path):
    rng = np.random.default_rng(0)
    frames = [_frame_result(rng, 4) for _ in range(7)]
    assignments = [[(t % 3 + 1, 0), (10, 1), (11 + t // 4, 2), (7, 3)] for t in range(7)]
    spool = tmp_path / "spool.sqlite"
    spooled, memory = VideoTracks(spool), VideoTracks()
    for t, (result, a) in enumerate(zip(frames, assignments)):
        spooled.add(t, result, a)
        memory.add(t, result, a)
    assert spool.is_file()
    ids = [5, 6, 7]
    got = spooled.results(3, ids, 8)
    assert got == memory.results(3, ids, 8)
    assert [e["track_id"] for e in got] == [7, 10, 11, 12]  # tracks 1-3 only ever had an empty mask
    by_id = {e["track_id"]: e for e in got}
    for t, (result, a) in enumerate(zip(frames, assignments)):
        for track, k in a:
            if k == 0:
                continue
            seg = by_id[track]["segmentations"][t]
            assert np.array_equal(mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}),
                                  result.masks[k].numpy())
    for e in got:
        assert len(e["segmentations"]) == 8 and e["segmentations"][7] is None
        assert e["score"] == round(float(np.mean([r.scores[k].item() for r, a in zip(frames, assignments)
                                                  for tr, k in a if tr == e["track_id"]])), 6)
    spooled.close()
    memory.close()
    assert not spool.exists()


def test_parts_merge_streams_the_bytes_json_dump_writes(tmp_path):
    out = tmp_path / "r.json"
    store = VideoParts(out)
    store.start({"a": 1})
    entries = {"v1": [{"video_id": 1, "score": 0.5, "segmentations": [None, {"size": [2, 2], "counts": "04"}]}],
               "v2": [], "v3": [{"video_id": 3, "score": 1.0, "segmentations": []}, {"video_id": 3, "x": "é\n"}]}
    for key in ("v3", "v1", "v2"):
        assert store.write(key, iter(entries[key])) == len(entries[key])
    store.write("v1", [{"video_id": 99}])  # a video written twice never doubles (one of the two parts wins)
    (store.folder / ".part-x.jsonl.ab12.tmp").write_text('{"key": "v9"}\n{"vid')  # a kill mid-write
    (store.folder / "spool-dead.sqlite").write_bytes(b"x")
    assert set(store.done()) == {"v1", "v2", "v3"}
    count, missing = store.merge(["v1", "v2", "v3", "v4"], out)
    expected = [e for k in ("v1", "v2", "v3") for e in entries[k]]
    assert (count, missing) == (3, ["v4"])
    assert json.loads(out.read_text()) in (expected, [{"video_id": 99}] + expected[1:])
    store.start({"a": 1})  # resuming clears what a kill left half-written
    assert not list(store.folder.glob(".part-*")) and not list(store.folder.glob("spool-*"))
    store.remove()
    store.start({"a": 1})
    store.write("v1", entries["v1"])
    store.write("v3", entries["v3"])
    store.merge(["v1", "v3"], out)
    assert out.read_text() == json.dumps(entries["v1"] + entries["v3"])
    store.merge([], out)
    assert out.read_text() == "[]"


def _one_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_the_run_state_is_checked_before_the_model_loads(tmp_path, capsys):
    garbage = tmp_path / "w.pth"  # loading it would fail with a checkpoint error, not the ones below
    garbage.write_bytes(b"not a checkpoint")
    frames = tmp_path / "clip"
    frames.mkdir()
    for t in range(2):
        Image.fromarray(np.full((32, 48, 3), 40 * t, np.uint8)).save(frames / f"{t:05d}.jpg")
    out = tmp_path / "r.json"
    argv = ["video", "--weights", str(garbage), "--input", str(frames), "--output", str(out), "--no-progress"]
    assert "--resume: nothing to resume" in _one_error(capsys, argv + ["--resume"])
    store = VideoParts(out)
    store.folder.mkdir()
    assert "not a parts folder of `condinst video`" in _one_error(capsys, argv + ["--resume"])
    from condinst.video.cli import _run_settings

    settings = _run_settings(build_parser().parse_args(argv))
    store.start({**settings, "max_lost": 3})
    assert "max_lost differ" in _one_error(capsys, argv + ["--resume"])
    store.start(settings)  # a run stopped before its first video: nothing to keep, started over
    message = _one_error(capsys, argv)
    assert "parts" not in message and "w.pth" in message  # past the checks, the garbage checkpoint fails to load
    store.write(str(frames.resolve()), [])
    message = _one_error(capsys, argv)
    assert "add --resume to continue it" in message and str(store.folder) in message
    assert not out.exists() and store.done()  # nothing of the stopped run was touched


def _run(argv, **popen):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "condinst", "video", "--weights", WEIGHTS, *argv, "--no-progress"]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=env, **popen)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=scaled(600))


@pytest.mark.slow
@pytest.mark.skipif(not videokit.FRUITS.is_dir(), reason="shared fruits_nuts photos not found")
def test_a_killed_run_resumes_to_the_uninterrupted_runs_file(tmp_path):
    videokit.crossing_video(tmp_path, frames=4, mp4=True)
    videokit.camera_video(tmp_path, frames=4)
    videokit.crossing_video(tmp_path, frames=4, video_id=3, name="dates", same_class=True)
    inputs = ["--input", str(tmp_path / "crossing.mp4"), str(tmp_path / "camera"), str(tmp_path / "dates")]
    reference = tmp_path / "reference.json"
    proc = _run(inputs + ["--output", str(reference)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not VideoParts(reference).exists()
    entries = json.loads(reference.read_text())
    assert {e["video_id"] for e in entries} == {1, 2, 3}

    out = tmp_path / "killed.json"
    store = VideoParts(out)
    proc = _run(inputs + ["--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + scaled(300)
    while not list(store.folder.glob("part-*.jsonl")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    assert list(store.done()) == [str((tmp_path / "crossing.mp4").resolve())]  # the first video, whole

    again = _run(inputs + ["--output", str(out)])
    assert again.returncode == 2 and "add --resume" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    resumed = _run(inputs + ["--output", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming: 1 of 3 video(s) already done" in resumed.stdout
    assert "crossing.mp4: " not in resumed.stdout and resumed.stdout.count(" frames, ") == 2  # not redone
    assert out.read_bytes() == reference.read_bytes()
    assert not store.exists()
