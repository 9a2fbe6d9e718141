"""Retraining as a background job: split/config/metrics helpers, a real short run, cancel."""
from __future__ import annotations

import json
import time

import pytest

from app.retrain import (JobStatus, RetrainError, fine_tune_config, loss_history, read_metrics,
                         split_dataset)
from app.service import Service, ServiceError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

needs_training = pytest.mark.skipif(not Service.retrain_available(), reason="training library not installed")


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


@pytest.fixture
def trained_service(tmp_path, tiny_weights, image_paths):
    service = Service.create(tmp_path / "ws", tiny_weights)
    report = service.images.add_files(image_paths)
    service.images.segment(report.new_ids)
    yield service
    service.close()


def test_retrain_without_annotations_is_refused(tmp_path, tiny_weights):
    service = Service.create(tmp_path / "ws", tiny_weights)
    try:
        with pytest.raises(ServiceError, match="Nothing to export"):
            service.start_retrain(2, 1)
        with pytest.raises(ServiceError, match="No finished"):
            service.use_retrained()
        assert service.retrain_status().state == "idle"
    finally:
        service.close()


@needs_training
@pytest.mark.slow
def test_a_short_fine_tuning_job_reports_ap_and_can_be_used(trained_service):
    service = trained_service
    message = service.start_retrain(iterations=2, batch_size=1, min_score=0.0)
    assert "Started fine-tuning" in message and "held out" in message
    with pytest.raises(ServiceError, match="already running"):
        service.start_retrain(2, 1)
    status = service.jobs.wait(300)
    assert status.state == "done", (status.message, status.log_tail)
    assert status.iteration == 2 and status.losses
    for metrics in (status.before, status.after):
        assert set(metrics) == {"bbox", "segm"} and "AP" in metrics["segm"]
    assert status.checkpoint.is_file() and status.checkpoint.is_relative_to(service.ws.root)
    assert "Now using model_final.pth" in service.use_retrained()
    view = service.initial_view()
    assert service.screens.screen(view).image is not None  # the new model serves


@needs_training
@pytest.mark.slow
def test_cancel_stops_the_training_process(trained_service):
    service = trained_service
    service.start_retrain(iterations=5000, batch_size=1, min_score=0.0)
    deadline = time.time() + 180
    while service.retrain_status().state != "training" and time.time() < deadline:
        assert service.retrain_status().state in ("preparing", "evaluating before", "training"), \
            service.retrain_status().message
        time.sleep(0.5)
    process = service.jobs._process
    assert "Cancelling" in service.cancel_retrain()
    status = service.jobs.wait(60)
    assert status.state == "cancelled"
    assert process is None or process.poll() is not None
    assert "No job is running" in service.cancel_retrain()
