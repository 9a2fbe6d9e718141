"""Fine-tuning the served model on the workspace's annotations, as a background job.

A job lives in its own folder ``<workspace>/retrain/<job id>/``::

    dataset/annotations/instances.json, dataset/images/   the exported workspace (app.export)
    train.json, val.json        the split: held-out images for the before/after comparison
    config.json                 the model's config with a short fine-tuning schedule
    before/results.json         detections of the current model on val.json
    train/                      `python -m condinst train` output (metrics.jsonl, model_final.pth)
    after/results.json          detections of the fine-tuned model on val.json
    *.log                       stdout/stderr of each subprocess

Every heavy step runs in a subprocess (``python -m condinst evaluate`` / ``train``), so a crash
or an out-of-memory kill ends the job, not the app; the app only reads files. Progress and live
losses come from ``train/metrics.jsonl``; box/mask AP is computed here from the results files
with pycocotools (``training.evaluation.evaluate_results``). Cancel terminates the running
subprocess. One job runs at a time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
METRICS_FILE = "metrics.jsonl"
FINAL_CHECKPOINT = "model_final.pth"
ACTIVE_STATES = ("preparing", "evaluating before", "training", "evaluating after")
LOSS_KEYS = ("total_loss", "loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask")


class RetrainError(Exception):
    """A job cannot be started or controlled; the message is meant for the user."""


@dataclass
class JobSpec:
    """What one fine-tuning job needs (all paths inside the job folder except init_weights)."""

    job_dir: Path
    images_dir: Path
    train_ann: Path
    val_ann: Path
    config: Path
    init_weights: Path
    max_iter: int
    batch_size: int
    device: str
    held_out_note: str = ""


@dataclass
class JobStatus:
    """A snapshot of the current (or last) job, for the UI.

    state: idle | preparing | evaluating before | training | evaluating after | done | failed | cancelled
    """

    state: str = "idle"
    message: str = ""
    iteration: int = 0
    max_iter: int = 0
    losses: list[dict[str, float]] = field(default_factory=list)
    before: dict | None = None
    after: dict | None = None
    checkpoint: Path | None = None
    job_dir: Path | None = None
    log_tail: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def fraction(self) -> float:
        """Overall progress 0..1 (training iterations dominate)."""
        if self.state == "done":
            return 1.0
        if self.state == "evaluating after":
            return 0.95
        if self.max_iter and self.iteration:
            return min(0.95, 0.05 + 0.9 * self.iteration / self.max_iter)
        return 0.05 if self.state == "evaluating before" else 0.0


# --------------------------------------------------------------------------------------
# Dataset split, config and metrics helpers (pure functions, unit-tested)
# --------------------------------------------------------------------------------------

def split_dataset(dataset: dict, val_fraction: float = 0.2) -> tuple[dict, dict, str]:
    """Split a COCO dataset dict by image into (train, val, note).

    Every 5th image (by id) is held out, at least one; with a single image there is nothing
    to hold out, so it is used for both (the note says so).
    """
    images = sorted(dataset["images"], key=lambda image: image["id"])
    if not images:
        raise RetrainError("The export holds no images.")
    if len(images) == 1:
        val_ids = {images[0]["id"]}
        train_ids = set(val_ids)
        note = "Only one image: it is used for training and for the comparison (not held out)."
    else:
        step = max(2, round(1 / val_fraction))
        val_ids = {image["id"] for k, image in enumerate(images) if k % step == step - 1} or {images[-1]["id"]}
        train_ids = {image["id"] for image in images} - val_ids
        note = f"{len(val_ids)} of {len(images)} images held out for the before/after comparison."

    def subset(ids: set) -> dict:
        return {**dataset, "images": [image for image in images if image["id"] in ids],
                "annotations": [a for a in dataset["annotations"] if a["image_id"] in ids]}

    return subset(train_ids), subset(val_ids), note


def fine_tune_config(config: dict, max_iter: int, batch_size: int) -> dict:
    """A short fine-tuning schedule: LR scaled to the batch, warmup 1/5, one LR drop at 80%."""
    config = json.loads(json.dumps(config))
    solver = config.setdefault("solver", {})
    solver["ims_per_batch"] = int(batch_size)
    solver["base_lr"] = float(solver.get("base_lr", 0.01)) * batch_size / 16
    solver["max_iter"] = int(max_iter)
    solver["warmup_iters"] = max(1, max_iter // 5)
    solver["steps"] = [max(1, int(max_iter * 0.8))]
    solver["checkpoint_period"] = int(max_iter)
    return config


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a metrics.jsonl (a partly written last line is ignored)."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def loss_history(entries: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Loss rows {iteration, loss, value} of the training log lines."""
    rows = []
    for entry in entries:
        for key in LOSS_KEYS:
            if key in entry:
                rows.append({"iteration": entry["iteration"], "loss": key, "value": float(entry[key])})
    return rows


def ap_metrics(ann_file: Path, results_file: Path) -> dict[str, dict[str, float | None]]:
    """Box and mask AP of a results JSON against a COCO annotation file."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    from training.evaluation import evaluate_results

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
    results = json.loads(Path(results_file).read_text())
    metrics, _ = evaluate_results(gt, results)
    return metrics


def tail(path: Path, lines: int = 12) -> str:
    """The last lines of a text file ('' if missing)."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------------------
# The job runner
# --------------------------------------------------------------------------------------

class RetrainManager:
    """Runs at most one fine-tuning job in a background thread, each step a subprocess."""

    def __init__(self, python: str = sys.executable, repo_root: Path = REPO_ROOT, poll_seconds: float = 0.5):
        self.python = python
        self.repo_root = Path(repo_root)
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._status = JobStatus()
        self._spec: JobSpec | None = None
        self._process: subprocess.Popen | None = None
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- control -------------------------------------------------------------------------

    def start(self, spec: JobSpec) -> None:
        """Start a job; RetrainError if one is running."""
        with self._lock:
            if self._status.active:
                raise RetrainError("A retraining job is already running; wait for it or cancel it.")
            self._cancel.clear()
            self._spec = spec
            self._status = JobStatus(state="preparing", message="Starting...", max_iter=spec.max_iter,
                                     job_dir=spec.job_dir)
            self._thread = threading.Thread(target=self._run, args=(spec,), name="retrain", daemon=True)
            self._thread.start()

    def cancel(self) -> str:
        """Stop the running job (terminates its subprocess)."""
        with self._lock:
            if not self._status.active:
                return "No job is running."
            self._cancel.set()
            process = self._process
        if process is not None:
            self._terminate(process)
        return "Cancelling the retraining job..."

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Block until the job thread ends (for tests and shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status()

    def shutdown(self) -> None:
        """Cancel any job and wait for its thread (app exit)."""
        self.cancel()
        self.wait(30)

    def status(self) -> JobStatus:
        """The current job's status, with live losses read from metrics.jsonl."""
        with self._lock:
            status = JobStatus(**{k: getattr(self._status, k) for k in JobStatus.__dataclass_fields__})
            spec = self._spec
        if spec is not None:
            entries = read_metrics(spec.job_dir / "train" / METRICS_FILE)
            status.losses = loss_history(entries)
            iterations = [e["iteration"] for e in entries if "total_loss" in e]
            if iterations and status.state in ("training", "evaluating after", "done"):
                status.iteration = max(iterations)
            log = {"preparing": None, "evaluating before": "before.log", "training": "train.log",
                   "evaluating after": "after.log"}.get(status.state, "train.log")
            if log:
                status.log_tail = tail(spec.job_dir / log)
        return status

    # ---- the job thread ------------------------------------------------------------------

    def _update(self, **values) -> None:
        with self._lock:
            for key, value in values.items():
                setattr(self._status, key, value)

    def _run(self, spec: JobSpec) -> None:
        try:
            self._update(state="evaluating before", message="Measuring the current model on the held-out images...")
            before_results = self._evaluate(spec, spec.init_weights, "before")
            before = ap_metrics(spec.val_ann, before_results)
            self._update(before=before, state="training", message=f"Training {spec.max_iter} iterations on "
                                                                  f"{spec.device}. {spec.held_out_note}")
            self._train(spec)
            checkpoint = spec.job_dir / "train" / FINAL_CHECKPOINT
            if not checkpoint.is_file():
                raise RetrainError(f"Training ended without {FINAL_CHECKPOINT}; see {spec.job_dir / 'train.log'}")
            self._update(checkpoint=checkpoint, state="evaluating after",
                         message="Measuring the fine-tuned model on the held-out images...")
            after = ap_metrics(spec.val_ann, self._evaluate(spec, checkpoint, "after"))
            self._update(after=after, state="done", message="Done: compare the AP below and switch if it is better.")
        except _Cancelled:
            self._update(state="cancelled", message="Cancelled.")
        except Exception as exc:  # noqa: BLE001 - the job fails, the app keeps serving
            self._update(state="failed", message=f"Failed: {exc}")
        finally:
            with self._lock:
                self._process = None

    def _evaluate(self, spec: JobSpec, weights: Path, name: str) -> Path:
        out = spec.job_dir / name
        out.mkdir(parents=True, exist_ok=True)
        results = out / "results.json"
        self._subprocess(["evaluate", "--weights", str(weights), "--ann", str(spec.val_ann),
                          "--images", str(spec.images_dir), "--output", str(results), "--device", spec.device,
                          "--no-progress"], spec.job_dir / f"{name}.log")
        return results

    def _train(self, spec: JobSpec) -> None:
        log_period = max(1, spec.max_iter // 100)
        workers = "0" if spec.device == "cpu" else "2"
        self._subprocess(["train", "--config", str(spec.config), "--train-ann", str(spec.train_ann),
                          "--train-images", str(spec.images_dir), "--output-dir", str(spec.job_dir / "train"),
                          "--weights", str(spec.init_weights), "--max-iter", str(spec.max_iter),
                          "--batch-size", str(spec.batch_size), "--device", spec.device,
                          "--num-workers", workers, "--log-period", str(log_period),
                          "--checkpoint-period", str(spec.max_iter), "--no-progress"],
                         spec.job_dir / "train.log")

    def _subprocess(self, args: list[str], log_path: Path) -> None:
        """Run `python -m condinst <args>`, logging to log_path; raise on failure or cancel."""
        if self._cancel.is_set():
            raise _Cancelled()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.repo_root), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        with open(log_path, "w") as log:
            process = subprocess.Popen([self.python, "-m", "condinst", *args], cwd=str(self.repo_root),
                                       stdout=log, stderr=subprocess.STDOUT, env=env)
            with self._lock:
                self._process = process
            while process.poll() is None:
                if self._cancel.is_set():
                    self._terminate(process)
                time.sleep(self.poll_seconds)
        if self._cancel.is_set():
            raise _Cancelled()
        if process.returncode != 0:
            last = tail(log_path, 3).strip().splitlines()
            raise RetrainError(f"`condinst {args[0]}` exited with code {process.returncode}"
                               + (f": {last[-1]}" if last else ""))

    @staticmethod
    def _terminate(process: subprocess.Popen) -> None:
        """SIGTERM, then SIGKILL after 10 s (only our own child process)."""
        if process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class _Cancelled(Exception):
    """Internal: the user cancelled the job."""
