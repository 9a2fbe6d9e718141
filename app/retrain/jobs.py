"""Fine-tuning the served model on the workspace's annotations, as background jobs that survive nothing.

Every job lives in its own folder ``<workspace>/retrain/<job id>/``::

    job.json                    the job's record (app.retrain.data.JobRecord), rewritten atomically
    dataset/                    the exported workspace (images/ + the annotation json)
    train.json, val.json        the split: held-out images for the before/after comparison
    config.json                 the model's config with a short fine-tuning schedule
    before/results.json         detections of the starting model on val.json
    train/                      `python -m condinst train` output (metrics.jsonl, model_final.pth)
    after/results.json          detections of the fine-tuned model on val.json
    *.log                       stdout/stderr of each subprocess

Each heavy step is a subprocess (``python -m condinst evaluate`` / ``train``) in its own process
group, started from the job's thread with PR_SET_PDEATHSIG on Linux: if the app dies (even by
kill -9) the kernel kills the step, and cancel or app exit stops the whole group. Nothing is
kept only in memory: a new ``RetrainJobs`` over the same folder reads every job.json and

- a job run by another live app process is watched (its status is read from disk, cancel works);
- a job whose app died but whose step process still runs is adopted: watched until the step
  ends, then continued if the step finished, else marked interrupted;
- a job whose processes are all gone is marked "interrupted" at the last logged iteration.

One job runs at a time per jobs folder, across restarts and app processes: starting claims the
job under an fcntl lock after checking every record. Finished jobs keep their checkpoints;
``finished()`` lists every usable one.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from condinst.io import atomic_write_json, atomic_write_text, remove_stale_temp_files

from app.retrain.data import (FINAL_CHECKPOINT, METRICS_FILE, FinishedJob, JobRecord, JobStatus, RetrainError,
                              ap_metrics, fine_tune_config, job_status, last_iteration, loss_history, mask_ap,
                              read_metrics, split_dataset, tail)
from app.retrain.process import (evaluate_args, process_alive, process_started, signal_group, spawn, stop_group,
                                 train_args)

__all__ = ["RetrainJobs", "JobStatus", "FinishedJob", "RetrainError", "split_dataset", "fine_tune_config",
           "read_metrics", "loss_history"]

REPO_ROOT = Path(__file__).resolve().parents[2]
CANCEL_FILE = "cancel.request"
LOCK_FILE = ".lock"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _running(owner: str) -> str:
    where = f" in {owner}" if owner.startswith("another") else ""
    return f"A retraining job is already running{where}; wait for it or cancel it."


class _Stopped(Exception):
    """Internal: the job was cancelled or the app is closing."""


# --------------------------------------------------------------------------------------
# The jobs
# --------------------------------------------------------------------------------------

class RetrainJobs:
    """The retraining jobs of one jobs folder (``<workspace>/retrain``); at most one runs.

    The job this object runs or watches is its "current" job: mode "own" (started here), "adopted"
    (its app died, its step process lives) or "watch" (another live app process runs it).
    """

    def __init__(self, root: Path, python: str = sys.executable, repo_root: Path = REPO_ROOT,
                 poll_seconds: float = 0.5):
        self.root = Path(root)
        self.python = python
        self.repo_root = Path(repo_root)
        self.poll_seconds = poll_seconds
        self._lock = threading.RLock()
        self._job_dir: Path | None = None
        self._record: JobRecord | None = None
        self._mode: str | None = None
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None
        self._cancel = threading.Event()
        self._stop_reason = ""
        self._closed = False
        self._tracked = 0.0  # when _track last rewrote job.json
        jobs = self._jobs()
        for job_dir, record in jobs:
            if record.active:
                self._settle(job_dir, record)
        if self._record is None and jobs:
            self._job_dir, self._record = jobs[-1][0], JobRecord.load(jobs[-1][0]) or jobs[-1][1]

    # ---- the app's side --------------------------------------------------------------------

    @staticmethod
    def available() -> bool:
        """Whether the training library (training.engine + training.cli) is installed."""
        import importlib.util

        return all(importlib.util.find_spec(name) is not None for name in ("training.engine", "training.cli"))

    @staticmethod
    def defaults(device: str) -> tuple[str, int, int]:
        """(device, iterations, batch size): a real budget on a GPU, a small one on a CPU."""
        import torch

        if torch.cuda.is_available():
            return (device if device.startswith("cuda") else "cuda"), 300, 8
        return "cpu", 20, 2

    def start(self, export: Callable[[Path], Path], init_weights: Path, model_config: dict,
              iterations: int, batch_size: int, device: str) -> str:
        """Export, split and start fine-tuning `init_weights` in the background; returns a message.

        `export(folder)` writes a COCO dataset (folder/images/ + an annotation json) and returns the
        json's path. RetrainError if a job runs (here or in another app process), the arguments are
        invalid or there is nothing to train on; errors of `export` itself propagate. A refused start
        leaves no job folder.
        """
        iterations, batch_size = int(iterations), int(batch_size)
        if iterations < 1 or batch_size < 1:
            raise RetrainError("Iterations and batch size must be at least 1.")
        init_weights = Path(init_weights)
        if not init_weights.is_file():
            raise RetrainError(f"The checkpoint to fine-tune does not exist: {init_weights}")
        if self._closed:
            raise RetrainError("The app is closing; no new retraining job.")
        status = self.status()
        if status.active:
            raise RetrainError(_running(status.owner))
        with self._lock:
            previous = (self._job_dir, self._record, self._mode)
            job_dir, record = self._claim(iterations, batch_size, device, init_weights)
            self._job_dir, self._record, self._mode = job_dir, record, "own"
            self._cancel.clear()
            self._stop_reason = ""
        try:
            self._prepare(job_dir, record, export, model_config)
        except BaseException as exc:
            shutil.rmtree(job_dir, ignore_errors=True)
            with self._lock:
                self._job_dir, self._record, self._mode = previous
            if isinstance(exc, OSError):
                raise RetrainError(f"Could not write the job folder {job_dir}: {exc.strerror or exc}") from exc
            raise
        with self._lock:
            self._thread = threading.Thread(target=self._run, args=(job_dir, record), name="retrain", daemon=True)
            self._thread.start()
        return (f"Started fine-tuning {init_weights.name} for {iterations} iterations on {device} "
                f"({record.train_images} training images). {record.held_out_note}")

    def status(self) -> JobStatus:
        """The current job's status, or the last job's (state 'idle' if none ever ran)."""
        with self._lock:
            if self._mode == "watch" and self._job_dir is not None:
                record = JobRecord.load(self._job_dir) or self._record
                self._record = record
                if not record.active:
                    self._mode = None
                elif not process_alive(record.owner_pid, record.owner_started):
                    self._mode = None
                    self._settle(self._job_dir, record)
            if self._record is None:
                return JobStatus()
            job_dir, record, mode = self._job_dir, dataclasses.replace(self._record), self._mode
        owner = {"own": "this app", "adopted": "adopted after a restart",
                 "watch": f"another app (pid {record.owner_pid})"}.get(mode or "", "")
        return job_status(job_dir, record, owner)

    def cancel(self, wait: float = 20.0) -> str:
        """Stop the running job and wait up to `wait` s for it; the message names the iteration reached."""
        status = self.status()
        if not status.active:
            return "No job is running."
        with self._lock:
            mode, job_dir, record = self._mode, self._job_dir, self._record
            if mode in ("own", "adopted"):
                self._stop_reason = "cancel"
                self._cancel.set()
        if mode == "watch":  # the owning app process sees the request; SIGTERM the step now in case it hangs
            atomic_write_text(job_dir / CANCEL_FILE, utc_now())
            if process_alive(record.pid, record.pid_started):
                signal_group(record.pid, signal.SIGTERM)
        status = self.wait(wait)
        return "Cancelling the retraining job..." if status.active else status.message

    def finished(self) -> list[FinishedJob]:
        """Every job whose fine-tuned checkpoint exists, newest first."""
        jobs = []
        for job_dir, record in self._jobs():
            checkpoint = job_dir / record.checkpoint if record.checkpoint else None
            if checkpoint is not None and checkpoint.is_file():
                jobs.append(FinishedJob(job_id=record.job_id, ended=record.ended or record.started,
                                        iterations=record.iteration or record.max_iter,
                                        before_ap=mask_ap(record.before), after_ap=mask_ap(record.after),
                                        checkpoint=checkpoint, job_dir=job_dir))
        return sorted(jobs, key=lambda job: (job.ended, job.job_id), reverse=True)

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Block until the current job ends or `timeout` seconds pass; its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                thread, mode = self._thread, self._mode
            if mode in ("own", "adopted") and thread is not None:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
                return self.status()
            status = self.status()
            if not status.active or (deadline is not None and time.monotonic() >= deadline):
                return status
            time.sleep(self.poll_seconds)

    def shutdown(self) -> None:
        """App exit: stop the job this app runs (its whole process group) and record where it stopped."""
        with self._lock:
            self._closed = True
            if self._mode in ("own", "adopted") and self._record is not None and self._record.active:
                self._stop_reason = "shutdown"
                self._cancel.set()
            thread = self._thread
        if thread is not None:
            thread.join(30)

    # ---- records -------------------------------------------------------------------------------

    def _jobs(self) -> list[tuple[Path, JobRecord]]:
        """(folder, record) of every job with a readable job.json, oldest first."""
        if not self.root.is_dir():
            return []
        jobs = [(d, r) for d in self.root.iterdir() if d.is_dir() and (r := JobRecord.load(d)) is not None]
        return sorted(jobs, key=lambda job: (job[1].started, job[1].job_id))

    def _save(self, job_dir: Path, record: JobRecord, **values) -> None:
        with self._lock:
            for key, value in values.items():
                setattr(record, key, value)
            record.save(job_dir)

    def _settle(self, job_dir: Path, record: JobRecord) -> None:
        """Take over an active job this object did not start: watch, adopt or mark it interrupted."""
        if process_alive(record.owner_pid, record.owner_started):
            if self._mode is None:
                self._job_dir, self._record, self._mode = job_dir, record, "watch"
        elif process_alive(record.pid, record.pid_started) and self._mode is None:
            self._job_dir, self._record, self._mode = job_dir, record, "adopted"
            self._cancel.clear()
            self._save(job_dir, record, owner_pid=os.getpid(), owner_started=process_started(os.getpid()))
            self._thread = threading.Thread(target=self._run, args=(job_dir, record, True), name="retrain",
                                            daemon=True)
            self._thread.start()
        else:
            if not process_alive(record.pid, record.pid_started):  # nobody writes there any more: a kill's leftovers go
                remove_stale_temp_files(job_dir, recursive=True)
            self._interrupt(job_dir, record, f"the app stopped while the job was {record.state}")

    def _interrupt(self, job_dir: Path, record: JobRecord, why: str) -> None:
        iteration = last_iteration(read_metrics(job_dir / "train" / METRICS_FILE)) or record.iteration
        checkpoint = "train/" + FINAL_CHECKPOINT if (job_dir / "train" / FINAL_CHECKPOINT).is_file() else None
        self._save(job_dir, record, state="interrupted", iteration=iteration, checkpoint=checkpoint, pid=None,
                   pid_started=None, ended=utc_now(),
                   message=f"Interrupted at iteration {iteration} of {record.max_iter}: {why}.")

    def _claim(self, iterations: int, batch_size: int, device: str, init_weights: Path) -> tuple[Path, JobRecord]:
        """Create the job folder and its record, unless any job of the folder runs (checked under a lock)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for job_dir, record in self._jobs():
                if not record.active:
                    continue
                if process_alive(record.owner_pid, record.owner_started) or process_alive(record.pid,
                                                                                           record.pid_started):
                    raise RetrainError(_running("" if record.owner_pid == os.getpid()
                                                else f"another app (pid {record.owner_pid})"))
                self._interrupt(job_dir, record, f"the app stopped while the job was {record.state}")
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
            job_dir = self.root / f"job-{stamp}"
            job_dir.mkdir()
            record = JobRecord(job_id=job_dir.name, message="Exporting the workspace...", started=utc_now(),
                               max_iter=iterations, batch_size=batch_size, device=device,
                               init_weights=str(init_weights.resolve()), owner_pid=os.getpid(),
                               owner_started=process_started(os.getpid()))
            record.save(job_dir)
        return job_dir, record

    def _prepare(self, job_dir: Path, record: JobRecord, export: Callable[[Path], Path], model_config: dict) -> None:
        """Export the dataset, split it, write the schedule."""
        ann_file = Path(export(job_dir / "dataset"))
        try:
            dataset = json.loads(ann_file.read_text())
        except ValueError as exc:
            raise RetrainError(f"The exported annotations {ann_file} are not valid JSON.") from exc
        train, val, note = split_dataset(dataset)
        if not train["annotations"]:
            raise RetrainError("Nothing to train on: the training images have no instances.")
        atomic_write_json(job_dir / "train.json", train)
        atomic_write_json(job_dir / "val.json", val)
        atomic_write_json(job_dir / "config.json", fine_tune_config(model_config, record.max_iter, record.batch_size),
                          indent=2)
        self._save(job_dir, record, held_out_note=note, train_images=len(train["images"]), message="Starting...")

    # ---- the job thread ------------------------------------------------------------------------

    def _run(self, job_dir: Path, record: JobRecord, adopted: bool = False) -> None:
        try:
            if adopted:
                self._await_orphan(job_dir, record)
            self._pipeline(job_dir, record)
        except _Stopped:
            iteration = last_iteration(read_metrics(job_dir / "train" / METRICS_FILE))
            if self._stop_reason == "shutdown":
                state, message = "interrupted", f"Stopped at iteration {iteration} of {record.max_iter}: the app closed."
            else:
                state, message = "cancelled", f"Cancelled at iteration {iteration} of {record.max_iter}."
            final = job_dir / "train" / FINAL_CHECKPOINT
            self._save(job_dir, record, state=state, message=message, iteration=iteration,
                       checkpoint="train/" + FINAL_CHECKPOINT if final.is_file() else None)
        except _Orphaned as exc:
            self._interrupt(job_dir, record, str(exc))
        except Exception as exc:  # noqa: BLE001 - the job fails, the app keeps serving
            self._save(job_dir, record, state="failed", message=f"Failed: {exc}")
        finally:
            with self._lock:
                self._process = None
            (job_dir / CANCEL_FILE).unlink(missing_ok=True)
            self._save(job_dir, record, pid=None, pid_started=None, ended=utc_now())

    def _pipeline(self, job_dir: Path, record: JobRecord) -> None:
        """Before evaluation, training, after evaluation; a step whose output exists is not run again."""
        val_ann, checkpoint = job_dir / "val.json", job_dir / "train" / FINAL_CHECKPOINT
        before, after = job_dir / "before" / "results.json", job_dir / "after" / "results.json"
        if not before.is_file():
            self._save(job_dir, record, state="evaluating before",
                       message="Measuring the current model on the held-out images...")
            self._step(job_dir, record, evaluate_args(job_dir, record.init_weights, "before", record.device),
                       "before.log")
        self._save(job_dir, record, before=ap_metrics(val_ann, before))
        if not checkpoint.is_file():
            self._save(job_dir, record, state="training", message=f"Training {record.max_iter} iterations on "
                                                                  f"{record.device}. {record.held_out_note}")
            self._step(job_dir, record, train_args(job_dir, record.init_weights, record.max_iter,
                                                   record.batch_size, record.device), "train.log")
            if not checkpoint.is_file():
                raise RetrainError(f"Training ended without {FINAL_CHECKPOINT}; see {job_dir / 'train.log'}")
        self._save(job_dir, record, checkpoint="train/" + FINAL_CHECKPOINT, state="evaluating after",
                   iteration=last_iteration(read_metrics(job_dir / "train" / METRICS_FILE)) or record.max_iter,
                   message="Measuring the fine-tuned model on the held-out images...")
        if not after.is_file():
            self._step(job_dir, record, evaluate_args(job_dir, str(checkpoint), "after", record.device),
                       "after.log")
        self._save(job_dir, record, after=ap_metrics(val_ann, after), state="done",
                   message="Done: compare the AP below and switch if it is better.")

    def _await_orphan(self, job_dir: Path, record: JobRecord) -> None:
        """Wait for the step a dead app left running; _Orphaned unless it finished its output."""
        while process_alive(record.pid, record.pid_started):
            if self._stopping(job_dir):
                stop_group(record.pid, record.pid_started)
                raise _Stopped()
            self._track(job_dir, record)
            time.sleep(self.poll_seconds)
        outputs = {"evaluating before": job_dir / "before" / "results.json",
                   "training": job_dir / "train" / FINAL_CHECKPOINT,
                   "evaluating after": job_dir / "after" / "results.json"}
        if record.state not in outputs or not outputs[record.state].is_file():
            raise _Orphaned(f"its {record.state} process ended while no app was watching it")
        self._save(job_dir, record, pid=None, pid_started=None)

    def _track(self, job_dir: Path, record: JobRecord) -> None:
        """Record the iteration the metrics log reached (job.json rewritten at most every 5 s)."""
        iteration = last_iteration(read_metrics(job_dir / "train" / METRICS_FILE))
        if iteration != record.iteration and time.monotonic() - self._tracked > 5:
            self._tracked = time.monotonic()
            self._save(job_dir, record, iteration=iteration)

    def _stopping(self, job_dir: Path) -> bool:
        if (job_dir / CANCEL_FILE).exists() and not self._cancel.is_set():
            self._stop_reason = "cancel"  # requested by another app process
            self._cancel.set()
        return self._cancel.is_set()

    def _step(self, job_dir: Path, record: JobRecord, args: list[str], log_name: str) -> None:
        """Run `python -m condinst <args>` in its own process group (killed with this thread on Linux)."""
        if self._stopping(job_dir):
            raise _Stopped()
        process = spawn(self.python, args, self.repo_root, job_dir / log_name)
        try:
            with self._lock:
                self._process = process
            self._save(job_dir, record, pid=process.pid, pid_started=process_started(process.pid))
            while process.poll() is None:
                if self._stopping(job_dir):
                    break
                self._track(job_dir, record)
                time.sleep(self.poll_seconds)
        finally:
            stop_group(process.pid, None, process)
            with self._lock:
                self._process = None
        if self._stopping(job_dir):
            raise _Stopped()
        if process.returncode != 0:
            last = tail(job_dir / log_name, 3).strip().splitlines()
            raise RetrainError(f"`condinst {args[0]}` exited with code {process.returncode}"
                               + (f": {last[-1]}" if last else ""))


class _Orphaned(Exception):
    """Internal: an adopted step ended without its output."""
