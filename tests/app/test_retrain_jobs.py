"""Real fine-tuning jobs of the tiny test model: killing the app kills training, cancel, finished checkpoints."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from app.retrain.jobs import RetrainError, RetrainJobs
from app.retrain.data import JobRecord, last_iteration, read_metrics
from condinst.checkpoint import read_checkpoint
from testutils import scaled, wait_until

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.skipif(not RetrainJobs.available(), reason="training library not installed")]

REPO = Path(__file__).resolve().parents[2]
LONG = 300  # iterations of a job that is stopped long before it ends (metrics logged every 3)

# The "app": starts a job, says so, and waits until it is killed (however long the machine takes to get there).
OWNER = """
import shutil, sys, threading
from pathlib import Path
from condinst.checkpoint import read_checkpoint
from app.retrain.jobs import RetrainJobs
root, source, weights, iterations = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
def export(folder):
    shutil.copytree(source, folder)
    return folder / "annotations" / "instances.json"
jobs = RetrainJobs(root, poll_seconds=0.2)
print(jobs.start(export, weights, read_checkpoint(weights)["config"], iterations, 1, "cpu"), flush=True)
threading.Event().wait()
"""


@pytest.fixture(scope="module")
def coco_source(image_paths, tmp_path_factory) -> Path:
    """A COCO dataset folder (images/ + annotations/instances.json): two squares per image."""
    folder = tmp_path_factory.mktemp("coco")
    (folder / "images").mkdir()
    (folder / "annotations").mkdir()
    images, annotations = [], []
    for image_id, path in enumerate(image_paths, start=1):
        shutil.copyfile(path, folder / "images" / path.name)
        with Image.open(path) as im:
            width, height = im.size
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        for k, (x, y, s) in enumerate(((20, 30, 60), (width // 2, height // 2, 80))):
            annotations.append({"id": 10 * image_id + k, "image_id": image_id, "category_id": 1 + k, "iscrowd": 0,
                                "bbox": [x, y, s, s], "area": s * s,
                                "segmentation": [[x, y, x + s, y, x + s, y + s, x, y + s]]})
    categories = [{"id": i, "name": name} for i, name in ((1, "date"), (2, "fig"), (3, "hazelnut"))]
    (folder / "annotations" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return folder


def exporter(source: Path):
    def export(folder: Path) -> Path:
        shutil.copytree(source, folder)
        return folder / "annotations" / "instances.json"
    return export


def running(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for its reaper does not)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state not in ("Z", "X")


def training_with_iterations(job_dir: Path, at_least: int):
    """The job's record once its training step runs and has logged `at_least` iterations, else None."""
    record = JobRecord.load(job_dir)
    assert record is None or record.state in ("preparing", "evaluating before", "training"), record.message
    logged = last_iteration(read_metrics(job_dir / "train" / "metrics.jsonl"))
    return record if record and record.state == "training" and record.pid and logged >= at_least else None


def no_temp_files(job_dir: Path) -> list[Path]:
    return [p for p in job_dir.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_killing_the_app_kills_training_and_a_restart_reports_the_interrupted_job(tmp_path, coco_source,
                                                                                 tiny_weights):
    root = tmp_path / "retrain"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    app = subprocess.Popen([sys.executable, "-c", OWNER, str(root), str(coco_source), str(tiny_weights), str(LONG)],
                           env=env, stdout=subprocess.PIPE, text=True)
    record = None
    try:
        assert "Started fine-tuning" in app.stdout.readline()
        job_dir = next(p for p in root.iterdir() if p.is_dir())
        record = wait_until(lambda: training_with_iterations(job_dir, 1), 120, "training to log an iteration", 0.2)
        assert running(record.pid) and record.owner_pid == app.pid

        other = RetrainJobs(root)  # a second app on the same workspace: sees the job, may not start another
        assert other.status().state == "training" and other.status().owner == f"another app (pid {app.pid})"
        with pytest.raises(RetrainError, match=f"already running in another app \\(pid {app.pid}\\)"):
            other.start(exporter(coco_source), tiny_weights, {}, 2, 1, "cpu")

        app.send_signal(signal.SIGKILL)
        app.wait(scaled(60))
        wait_until(lambda: not running(record.pid), 60, "the training process to die with its app")
    finally:
        app.kill()
        app.wait()
        if record is not None and running(record.pid):  # the bug: leave no orphan behind even then
            os.killpg(record.pid, signal.SIGKILL)
    logged = last_iteration(read_metrics(job_dir / "train" / "metrics.jsonl"))
    assert logged >= 1
    for jobs in (other, RetrainJobs(root)):  # the watcher finds out, and so does a restarted app
        status = jobs.status()
        assert (status.state, status.iteration, status.max_iter) == ("interrupted", logged, LONG), status.message
    assert JobRecord.load(job_dir).state == "interrupted" and not no_temp_files(job_dir)


@pytest.mark.slow
def test_cancel_reports_and_keeps_the_iteration_reached(tmp_path, coco_source, tiny_weights):
    jobs = RetrainJobs(tmp_path / "retrain", poll_seconds=0.2)
    jobs.start(exporter(coco_source), tiny_weights, read_checkpoint(tiny_weights)["config"], LONG, 1, "cpu")
    try:
        job_dir = jobs.status().job_dir
        record = wait_until(lambda: training_with_iterations(job_dir, 3), 120, "training to log 3 iterations", 0.2)
        message = jobs.cancel(wait=scaled(20))
    finally:
        jobs.shutdown()
    logged = last_iteration(read_metrics(job_dir / "train" / "metrics.jsonl"))
    assert logged >= 3 and message == f"Cancelled at iteration {logged} of {LONG}."
    status = jobs.status()
    assert (status.state, status.iteration, status.message) == ("cancelled", logged, message)
    assert not running(record.pid) and RetrainJobs(job_dir.parent).status().iteration == logged
    assert not no_temp_files(job_dir) and not (job_dir / "train" / "model_final.pth").exists()
    assert jobs.finished() == []


@pytest.mark.slow
def test_two_finished_jobs_keep_both_checkpoints(tmp_path, coco_source, tiny_weights):
    root = tmp_path / "retrain"
    jobs = RetrainJobs(root, poll_seconds=0.2)
    config = read_checkpoint(tiny_weights)["config"]
    try:
        for iterations in (2, 1):
            message = jobs.start(exporter(coco_source), tiny_weights, config, iterations, 1, "cpu")
            assert "Started fine-tuning tiny.pth" in message and "held out" in message
            with pytest.raises(RetrainError, match="already running"):
                jobs.start(exporter(coco_source), tiny_weights, config, iterations, 1, "cpu")
            status = jobs.wait(scaled(300))
            assert status.state == "done", (status.message, status.log_tail)
            assert status.iteration == iterations and status.losses
            for metrics in (status.before, status.after):
                assert set(metrics) == {"bbox", "segm"} and "AP" in metrics["segm"]
    finally:
        jobs.shutdown()
    finished = jobs.finished()
    assert [job.iterations for job in finished] == [1, 2]  # newest first
    assert finished == RetrainJobs(root).finished()  # a restarted app offers the same models
    for job in finished:
        assert job.checkpoint.is_file() and job.checkpoint.is_relative_to(root)
        assert read_checkpoint(job.checkpoint)["model"]  # the first job's model is still whole
        assert job.before_ap is not None and job.after_ap is not None
    assert RetrainJobs(root).status().job_id == finished[0].job_id


def test_a_restart_removes_what_writes_killed_with_the_job_left_and_keeps_the_record(tmp_path):
    """Killed mid-write, the app leaves `.job.json.XXXX.tmp` (and its training process may leave one of a checkpoint):
    the next app that finds the job with nobody alive marks it interrupted and removes them; the record stays the
    last one written. (A kill landing in that write made the killing test above fail once.)"""
    from app.retrain.data import JobRecord

    job_dir = tmp_path / "retrain" / "job-1"
    (job_dir / "train").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that ran and is gone
    JobRecord("job-1", state="training", started="2026-12-05T00:00:00Z", iteration=3, max_iter=10,
              owner_pid=dead.pid, pid=dead.pid).save(job_dir)
    (job_dir / ".job.json.k1l2m3.tmp").write_text('{"job_id": "job-1", "sta')
    (job_dir / "train" / ".model_final.pth.x9y8.tmp").write_bytes(b"half a checkpoint")
    (job_dir / "train" / "kept.tmp").write_text("not an atomic write's")  # not the atomic-write pattern: kept
    status = RetrainJobs(tmp_path / "retrain").status()
    assert status.state == "interrupted" and status.iteration == 3, status.message
    assert sorted(p.name for p in job_dir.rglob("*.tmp")) == ["kept.tmp"]
    assert JobRecord.load(job_dir).state == "interrupted"
