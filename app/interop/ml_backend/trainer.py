"""Fine-tuning on a Label Studio project's submitted annotations with the app's retrain job.

    trainer = Trainer(workdir / "retrain", session, studio, iterations=20, batch_size=2, device="cpu")
    message = trainer.start(project_id, config, match)    # RetrainError if a job runs or nothing to train on

`start` reads the project's annotated tasks from Label Studio (its JSON export), then hands
`app.retrain.jobs.RetrainJobs` an export function that downloads their images and writes a COCO file
(`app.interop.ml_backend.interop.tasks_to_coco`, category ids of the served model, every class listed so
the class head keeps its order). The job (held-out evaluation, ``python -m condinst train``,
evaluation again, each a subprocess in its own process group) runs in the background; its log is
``<job>/train.log``, its progress the backend's log. When it is done the model session switches to
the fine-tuned checkpoint, so the next predictions carry a new ``model_version``. A failed or
cancelled job leaves the model as it was.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from app.retrain.jobs import RetrainError, RetrainJobs
from condinst.errors import UserError
from app.retrain.data import mask_ap
from app.interop.ml_backend.client import FetchError, LabelStudio
from app.interop.ml_backend.interop import latest_annotation, task_image_url, tasks_to_coco
from app.interop.ml_backend.label_config import LabelConfig, LabelMatch
from training.entry_checks import is_id

log = logging.getLogger("condinst.ml_backend")


class Trainer:
    """One retrain job at a time for the backend (see the module docstring)."""

    def __init__(self, root: Path, session, studio: LabelStudio, iterations: int, batch_size: int, device: str,
                 poll_seconds: float = 2.0):
        self.session, self.studio = session, studio
        self.iterations, self.batch_size, self.device = int(iterations), int(batch_size), device
        self.jobs = RetrainJobs(Path(root))
        self.poll_seconds = poll_seconds
        self._watcher: threading.Thread | None = None
        self._closed = threading.Event()

    def status(self):
        return self.jobs.status()

    def start(self, project_id: int, config: LabelConfig, match: LabelMatch) -> str:
        """Check, then start fine-tuning in the background; a message (RetrainError / FetchError on refusal).

        The project's export is read here (a refusal names what is missing); downloading its images
        and the job itself run in a thread, so Label Studio's webhook gets its answer at once.
        """
        if self.session.weights is None or str(self.session.weights).endswith(".onnx"):
            raise RetrainError("Training needs the PyTorch checkpoint: start the backend with a .pth --weights.")
        if self.jobs.status().active or (self._watcher is not None and self._watcher.is_alive()):
            raise RetrainError("A training job is already running; wait for it (see the backend log).")
        tasks = [t for t in self.studio.export(project_id) if latest_annotation(t) is not None]
        if not tasks:
            raise RetrainError(f"Project {project_id} has no submitted annotations to train on.")
        self._watcher = threading.Thread(target=self._run, args=(project_id, tasks, config, match),
                                         name="ml-backend-train", daemon=True)
        self._watcher.start()
        return f"Training on the {len(tasks)} annotated tasks of project {project_id} starts; see the backend log."

    def _run(self, project_id: int, tasks: list[dict], config: LabelConfig, match: LabelMatch) -> None:
        """Download, start the retrain job, follow it, switch the model when it is done."""
        try:
            message = self.jobs.start(lambda folder: self.write_dataset(tasks, config, match, Path(folder)),
                                      self.session.weights, self.session.predictor.cfg.to_dict(), self.iterations,
                                      self.batch_size, self.device)
        except (UserError, OSError) as exc:  # RetrainError, FetchError, ...
            log.error("training on project %s did not start: %s", project_id, exc)
            return
        log.info("training on project %s: %s", project_id, message)
        self._watch()

    def write_dataset(self, tasks: list[dict], config: LabelConfig, match: LabelMatch, folder: Path) -> Path:
        """The tasks' images (downloaded from Label Studio) and their masks as folder/images + a COCO file."""
        images = folder / "images"
        images.mkdir(parents=True, exist_ok=True)
        from condinst.preprocess import image_size

        def image_of(task: dict) -> dict | None:
            try:
                if not is_id(task.get("id")):
                    raise FetchError("the task has no integer id")
                path = self.studio.download(task_image_url(task, config.value), task["id"], images,
                                            f"task-{task['id']}")
                width, height = image_size(path)  # as the image shows after its EXIF orientation
            except (FetchError, OSError, ValueError) as exc:
                log.warning("training: task %s skipped: %s", task.get("id"), exc)
                return None
            return {"file_name": path.name, "width": width, "height": height}

        def category_of(label: str) -> int | None:
            k = match.to_class.get(label)
            return None if k is None else self.session.category_id(k)

        coco, skipped = tasks_to_coco(tasks, image_of, category_of)
        for message in skipped:
            log.warning("training: %s", message)
        coco["categories"] = [{"id": self.session.category_id(k), "name": self.session.class_name(k)}
                              for k in range(self.session.num_classes)]
        path = folder / "annotations.json"
        path.write_text(json.dumps(coco), encoding="utf-8")
        log.info("training set: %d images, %d masks from Label Studio", len(coco["images"]), len(coco["annotations"]))
        return path

    def _watch(self) -> None:
        """Log progress until the job ends; switch the model to its checkpoint when it is done."""
        last = None
        while not self._closed.is_set():
            status = self.jobs.wait(self.poll_seconds)
            line = (status.state, status.iteration)
            if line != last:
                log.info("training: %s (iteration %d of %d) %s", status.state, status.iteration, status.max_iter,
                         status.message)
                last = line
            if not status.active:
                break
        status = self.jobs.status()
        if status.state == "done":
            log.info("training: held-out mask AP %s before, %s after", _ap(status.before), _ap(status.after))
        if status.state == "done" and status.checkpoint is not None and not self._closed.is_set():
            try:
                self.session.switch(status.checkpoint)
            except Exception as exc:  # noqa: BLE001 - the backend keeps serving the model it had
                log.error("training finished but %s cannot be loaded: %s", status.checkpoint, exc)
                return
            log.info("now serving %s (model_version %s); restart with --weights %s to keep it",
                     status.checkpoint, model_version(self.session), status.checkpoint)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the watcher has switched the model (tests)."""
        if self._watcher is not None:
            self._watcher.join(timeout)

    def shutdown(self) -> None:
        self._closed.set()
        self.jobs.shutdown()


def _ap(metrics: dict | None) -> str:
    value = mask_ap(metrics)
    return "-" if value is None else f"{value:.1f}"


def model_version(session) -> str:
    """What predictions are tagged with: the weights' name and their content key."""
    stem = session.weights.parent.parent.name if session.weights and session.weights.parent.name == "train" \
        else (session.weights.stem if session.weights else "random")
    return f"condinst-{stem}-{session.key[:8]}"
