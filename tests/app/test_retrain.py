"""Retraining jobs without training: split/config/metrics helpers, and what a restarted app finds in job.json.

Recovery is tested on fake job folders whose "processes" are plain `sleep`s (alive) or exited
`true`s (dead); the real training runs are in test_retrain_jobs.py.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from app.retrain.jobs import (FinishedJob, JobStatus, RetrainError, RetrainJobs, fine_tune_config, loss_history,
                         read_metrics, split_dataset)
from app.retrain.data import JobRecord
from app.retrain.process import process_alive, process_started
from testutils import scaled


def dataset(n_images: int) -> dict:
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 4, "height": 4} for i in range(1, n_images + 1)],
            "annotations": [{"id": 10 + i, "image_id": i} for i in range(1, n_images + 1)],
            "categories": [{"id": 1, "name": "a"}]}


def test_split_holds_out_every_fifth_image_and_at_least_one():
    train, val, note = split_dataset(dataset(10))
    assert [i["id"] for i in val["images"]] == [5, 10] and len(train["images"]) == 8
    assert {a["image_id"] for a in val["annotations"]} == {5, 10}
    train, val, note = split_dataset(dataset(2))
    assert [i["id"] for i in val["images"]] == [2] and [i["id"] for i in train["images"]] == [1]
    train, val, note = split_dataset(dataset(1))
    assert train["images"] == val["images"] and "not held out" in note
    with pytest.raises(RetrainError):
        split_dataset(dataset(0))


def test_fine_tune_config_is_a_short_schedule():
    config = fine_tune_config({"solver": {"base_lr": 0.01, "warmup_iters": 1000, "steps": [60000, 80000]}}, 50, 4)
    solver = config["solver"]
    assert solver["max_iter"] == 50 and solver["ims_per_batch"] == 4 and solver["base_lr"] == pytest.approx(0.0025)
    assert solver["warmup_iters"] == 10 and solver["steps"] == [40] and solver["checkpoint_period"] == 50


def test_metrics_lines_become_loss_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"iteration": 1, "total_loss": 2.0, "loss_mask": 0.5, "lr": 0.1}) + "\n"
                    + json.dumps({"iteration": 2, "bbox/AP": 0.1}) + "\n{\"iteration\": 3, \"tot")
    entries = read_metrics(path)
    assert len(entries) == 2
    assert loss_history(entries) == [{"iteration": 1, "loss": "total_loss", "value": 2.0},
                                     {"iteration": 1, "loss": "loss_mask", "value": 0.5}]
    assert JobStatus(state="training", iteration=5, max_iter=10).fraction == pytest.approx(0.5)


# ---- fake jobs ---------------------------------------------------------------------------------

@pytest.fixture
def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def sleeper():
    """Start `sleep 120` processes (own process group, like a training step); all are killed at the end."""
    started = []

    def start() -> subprocess.Popen:
        process = subprocess.Popen(["sleep", "120"], start_new_session=True)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def fake_job(root, job_id: str, state: str, logged: int = 0, weights_file: bool = False, **fields) -> JobRecord:
    """A job folder as a killed app leaves it: job.json, `logged` lines of metrics, maybe a checkpoint."""
    job_dir = root / job_id
    (job_dir / "train").mkdir(parents=True)
    lines = [json.dumps({"iteration": i, "total_loss": 1.0 / i}) for i in range(1, logged + 1)]
    (job_dir / "train" / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    if weights_file:
        (job_dir / "train" / "model_final.pth").write_bytes(b"weights")
    record = JobRecord(job_id=job_id, state=state, started=job_id, max_iter=40, **fields)
    record.save(job_dir)
    return record


def orphan_job(root, sleeper, dead_pid: int, logged: int = 0) -> subprocess.Popen:
    """A job in training whose app died while its training process (a sleeper) still runs; the process."""
    step = sleeper()
    fake_job(root, "job-1", "training", logged=logged, owner_pid=dead_pid, pid=step.pid,
             pid_started=process_started(step.pid))
    return step


def refused_start(jobs: RetrainJobs, tmp_path) -> str:
    """The message of a start whose export holds no images (the 'already running' check comes first)."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"w")

    def export(folder):
        folder.mkdir(parents=True)
        (folder / "instances.json").write_text(json.dumps(dataset(0)))
        return folder / "instances.json"

    def folders():
        return sorted(p for p in jobs.root.iterdir() if p.is_dir()) if jobs.root.is_dir() else []

    before = folders()
    with pytest.raises(RetrainError) as info:
        jobs.start(export, weights, {}, 5, 1, "cpu")
    assert folders() == before  # a refused start leaves no job folder
    return str(info.value)


def test_a_job_whose_app_died_is_interrupted_at_its_last_logged_iteration(tmp_path, dead_pid):
    root = tmp_path / "retrain"
    fake_job(root, "job-1", "training", logged=7, owner_pid=dead_pid, pid=dead_pid)
    status = RetrainJobs(root).status()
    assert (status.state, status.iteration, status.max_iter) == ("interrupted", 7, 40)
    assert "Interrupted at iteration 7 of 40" in status.message and not status.active
    assert JobRecord.load(root / "job-1").state == "interrupted"  # persisted: the next restart agrees
    assert RetrainJobs(root).status().iteration == 7
    assert "holds no images" in refused_start(RetrainJobs(root), tmp_path)  # no longer blocks a new job
    assert [p.name for p in root.iterdir() if p.is_dir()] == ["job-1"]


def test_a_reused_pid_does_not_pass_for_the_dead_app(tmp_path, sleeper):
    impostor = sleeper()
    started = process_started(impostor.pid)
    assert process_alive(impostor.pid, started) and not process_alive(impostor.pid, started + 1)
    root = tmp_path / "retrain"
    fake_job(root, "job-1", "evaluating before", owner_pid=impostor.pid, owner_started=started + 1)
    assert RetrainJobs(root).status().state == "interrupted"


def test_a_live_training_process_of_a_dead_app_is_adopted_and_blocks_a_second_job(tmp_path, dead_pid, sleeper):
    root = tmp_path / "retrain"
    step = orphan_job(root, sleeper, dead_pid, logged=3)
    jobs = RetrainJobs(root, poll_seconds=0.05)
    status = jobs.status()
    assert status.state == "training" and status.owner == "adopted after a restart" and status.iteration == 3
    assert "already running" in refused_start(jobs, tmp_path)
    other = RetrainJobs(root)  # a second app process on the workspace sees it run here
    assert other.status().active and "another app" in other.status().owner
    assert "already running in another app" in refused_start(other, tmp_path)
    assert jobs.cancel() == "Cancelled at iteration 3 of 40."
    assert step.wait(scaled(60)) is not None  # the whole group got the signal
    assert (jobs.status().state, jobs.status().iteration) == ("cancelled", 3)
    assert other.status().state == "cancelled"
    assert not (root / "job-1" / "cancel.request").exists()


def test_an_adopted_process_that_ends_without_output_leaves_the_job_interrupted(tmp_path, dead_pid, sleeper):
    root = tmp_path / "retrain"
    step = orphan_job(root, sleeper, dead_pid, logged=5)
    jobs = RetrainJobs(root, poll_seconds=0.05)
    assert jobs.status().active
    step.kill()
    step.wait()
    status = jobs.wait(scaled(60))
    assert status.state == "interrupted" and status.iteration == 5 and "no app was watching" in status.message


def test_shutdown_stops_an_adopted_process_group(tmp_path, dead_pid, sleeper):
    root = tmp_path / "retrain"
    step = orphan_job(root, sleeper, dead_pid)
    jobs = RetrainJobs(root, poll_seconds=0.05)
    jobs.shutdown()
    assert step.wait(scaled(60)) is not None
    assert RetrainJobs(root).status().state == "interrupted"


def test_a_job_run_by_another_live_app_is_watched_and_cancel_asks_it(tmp_path, sleeper):
    root = tmp_path / "retrain"
    app = sleeper()  # stands for the other app process
    fake_job(root, "job-1", "training", logged=2, owner_pid=app.pid, owner_started=process_started(app.pid))
    jobs = RetrainJobs(root, poll_seconds=0.05)
    status = jobs.status()
    assert status.active and status.owner == f"another app (pid {app.pid})" and status.iteration == 2
    assert "already running in another app" in refused_start(jobs, tmp_path)
    assert jobs.cancel(wait=0.5) == "Cancelling the retraining job..."  # the (fake) owner never answers
    assert (root / "job-1" / "cancel.request").is_file()
    app.kill()
    app.wait()
    assert jobs.status().state == "interrupted"  # its app died: found out on the next status


def test_every_finished_checkpoint_stays_listed_newest_first(tmp_path, dead_pid):
    root = tmp_path / "retrain"
    segm = {"bbox": {"AP": 0.1}, "segm": {"AP": 0.25}}
    for job_id, state, ended in (("job-a", "done", "2024-01-01T00:00:00"), ("job-b", "failed", "2024-01-02T00:00:00"),
                                 ("job-c", "done", "2024-01-03T00:00:00")):
        fake_job(root, job_id, state, weights_file=state == "done", iteration=40, ended=ended, before=segm,
                 after={"segm": {"AP": 0.375}}, checkpoint="train/model_final.pth" if state == "done" else None)
    (root / "job-a" / "train" / "model_final.pth").unlink()  # a deleted checkpoint is not offered
    fake_job(root, "job-d", "interrupted", weights_file=True, ended="2024-01-04T00:00:00",
             checkpoint="train/model_final.pth", before=segm)  # trained, app died before the comparison
    jobs = RetrainJobs(root)
    finished = jobs.finished()
    assert [job.job_id for job in finished] == ["job-d", "job-c"]
    assert finished[1] == FinishedJob(job_id="job-c", ended="2024-01-03T00:00:00", iterations=40, before_ap=0.25,
                                      after_ap=0.375, checkpoint=root / "job-c" / "train" / "model_final.pth",
                                      job_dir=root / "job-c")
    assert finished[0].after_ap is None and "mask AP 25.0 -> ?" in finished[0].label
    assert jobs.status().job_id == "job-d"  # a restarted app shows the last job, not "idle"


def test_invalid_starts_are_refused_and_leave_no_folder(tmp_path):
    root = tmp_path / "retrain"
    jobs = RetrainJobs(root)
    assert jobs.status().state == "idle" and jobs.finished() == [] and jobs.cancel() == "No job is running."
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"w")
    with pytest.raises(RetrainError, match="at least 1"):
        jobs.start(lambda folder: folder, weights, {}, 0, 1, "cpu")
    with pytest.raises(RetrainError, match="does not exist"):
        jobs.start(lambda folder: folder, tmp_path / "missing.pth", {}, 5, 1, "cpu")

    def unlabelled(folder):
        folder.mkdir(parents=True)
        data = dataset(3)
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 3]  # only the held-out image
        (folder / "instances.json").write_text(json.dumps(data))
        return folder / "instances.json"

    with pytest.raises(RetrainError, match="Nothing to train on"):
        jobs.start(unlabelled, weights, {}, 5, 1, "cpu")

    def broken(folder):
        raise PermissionError(13, "Permission denied")

    with pytest.raises(RetrainError, match="Could not write the job folder .*Permission denied"):
        jobs.start(broken, weights, {}, 5, 1, "cpu")
    assert [p for p in root.iterdir() if p.is_dir()] == [] and jobs.status().state == "idle"
