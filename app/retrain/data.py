"""The data of retraining jobs: the persisted record, the status the UI reads, split, schedule, metrics.

Dataclasses and pure functions; the job runner (app.retrain.jobs) owns processes and threads.

A job's record is ``<jobs root>/<job id>/job.json`` (``JobRecord``), rewritten atomically on every
change of state, so a killed app leaves the last state it reached and a restarted app finds it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import AppError
from condinst.io import atomic_write_json

JOB_FILE = "job.json"
METRICS_FILE = "metrics.jsonl"
FINAL_CHECKPOINT = "model_final.pth"
ACTIVE_STATES = ("preparing", "evaluating before", "training", "evaluating after")
STEP_LOGS = {"evaluating before": "before.log", "training": "train.log", "evaluating after": "after.log"}
LOSS_KEYS = ("total_loss", "loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask")


class RetrainError(AppError):
    """A job cannot be started or controlled; the message is meant for the user (a warning in the page)."""


@dataclass
class JobRecord:
    """What ``job.json`` holds about one job.

    state: preparing | evaluating before | training | evaluating after | done | failed | cancelled | interrupted
    owner_pid / owner_started: the app process running the job (``started`` = kernel start time in clock ticks,
    which tells a live owner from a new process that reuses its pid). pid / pid_started: the subprocess of the
    current step, leader of its own process group. checkpoint: relative to the job folder.
    """

    job_id: str
    state: str = "preparing"
    message: str = ""
    started: str = ""
    ended: str = ""
    iteration: int = 0
    max_iter: int = 0
    batch_size: int = 0
    device: str = ""
    init_weights: str = ""
    train_images: int = 0
    held_out_note: str = ""
    checkpoint: str | None = None
    before: dict | None = None
    after: dict | None = None
    owner_pid: int | None = None
    owner_started: int | None = None
    pid: int | None = None
    pid_started: int | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def save(self, job_dir: Path) -> None:
        atomic_write_json(Path(job_dir) / JOB_FILE, dataclasses.asdict(self), indent=1)

    @classmethod
    def load(cls, job_dir: Path) -> JobRecord | None:
        """The record of a job folder; None if it has none or it cannot be read."""
        try:
            data = json.loads((Path(job_dir) / JOB_FILE).read_text())
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{key: value for key, value in data.items() if key in known})
        except (OSError, ValueError, TypeError):
            return None


@dataclass
class JobStatus:
    """A snapshot of the current (or last) job, for the UI.

    state: idle | preparing | evaluating before | training | evaluating after | done | failed | cancelled | interrupted
    owner: '' (no job), 'this app', 'adopted after a restart' or 'another app (pid N)'.
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
    job_id: str = ""
    started: str = ""
    owner: str = ""

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


@dataclass(frozen=True)
class FinishedJob:
    """A job whose fine-tuned checkpoint exists (after_ap is None if the final comparison did not run)."""

    job_id: str
    ended: str
    iterations: int
    before_ap: float | None
    after_ap: float | None
    checkpoint: Path
    job_dir: Path

    @property
    def label(self) -> str:
        """One line for a model picker."""
        ap = " -> ".join("?" if v is None else f"{100 * v:.1f}" for v in (self.before_ap, self.after_ap))
        return f"{self.job_id} ({self.iterations} it, mask AP {ap})"


def job_status(job_dir: Path, record: JobRecord, owner: str = "") -> JobStatus:
    """The UI's view of a job: its record plus the live losses, iteration and log of its folder."""
    entries = read_metrics(job_dir / "train" / METRICS_FILE)
    iteration = record.iteration
    if record.state in ("training", "evaluating after", "done"):
        iteration = max(iteration, last_iteration(entries))
    return JobStatus(state=record.state, message=record.message, iteration=iteration, max_iter=record.max_iter,
                     losses=loss_history(entries), before=record.before, after=record.after,
                     checkpoint=job_dir / record.checkpoint if record.checkpoint else None, job_dir=job_dir,
                     log_tail=tail(job_dir / STEP_LOGS.get(record.state, "train.log")),
                     job_id=record.job_id, started=record.started, owner=owner if record.active else "")


def mask_ap(metrics: dict | None) -> float | None:
    """The mask AP of an ``ap_metrics`` result (None if not measured)."""
    return (metrics or {}).get("segm", {}).get("AP")


# --------------------------------------------------------------------------------------
# Dataset split, config and metrics helpers
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


def last_iteration(entries: list[dict[str, Any]]) -> int:
    """The last training iteration the metrics log reached (0 before the first logged one)."""
    return max((int(e["iteration"]) for e in entries if "total_loss" in e), default=0)


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
