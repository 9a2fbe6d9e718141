"""Smoke tests of the benchmark scripts (bench/): tiny models, tiny images, one thread, a few iterations.

They check that each script runs end to end, writes its JSON with the expected keys, and forces the
detection counts it promises; the timings themselves are meaningless here. GPU variants skip without
CUDA.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from testutils import scaled

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import common, cpu_latency, inference, mask_head, sipmask_rescoring, train_step, video  # noqa: E402

TIMING_KEYS = {"iters", "batch_size", "median_ms", "p10_ms", "p90_ms", "iqr_ms", "mean_ms", "min_ms",
               "ms_per_image", "images_per_s", "times_ms"}
ENV_KEYS = {"device", "device_name", "torch", "torchvision", "cuda", "cpu_count", "torch_threads", "git_commit"}
FAST = ["--iters", "2", "--warmup", "1", "--threads", "1"]
# Small enough to be quick, large enough that the tiny models' P7 map has two cells (GroupNorm needs it).
TINY_INFERENCE = ["--tiny", "--sizes", "96x128", "--min-size", "128", "--max-size", "192"]


def read(path: Path) -> dict:
    assert path.is_file(), f"{path} was not written"
    assert not list(path.parent.glob(f".{path.name}.*")), "a temporary file was left behind"
    return json.loads(path.read_text())


def check_common(payload: dict, benchmark: str, device: str = "cpu") -> None:
    assert payload["benchmark"] == benchmark
    assert ENV_KEYS <= set(payload["environment"])
    assert payload["environment"]["device"] == device
    assert isinstance(payload["settings"], dict)
    assert payload["results"]


# ---- common helpers -------------------------------------------------------------------------------

def test_summarize_statistics():
    stats = common.summarize([float(x) for x in range(1, 11)], batch_size=2)
    assert stats["median_ms"] == pytest.approx(5.5)
    assert stats["p10_ms"] == pytest.approx(1.9)
    assert stats["p90_ms"] == pytest.approx(9.1)
    assert stats["iqr_ms"] == pytest.approx(7.75 - 3.25)
    assert stats["ms_per_image"] == pytest.approx(2.75)
    assert stats["images_per_s"] == pytest.approx(2000 / 5.5)
    assert TIMING_KEYS <= set(stats)


def test_time_fn_counts_calls():
    calls = []
    stats = common.time_fn(lambda: calls.append(1), torch.device("cpu"), iters=3, warmup=2)
    assert len(calls) == 5 and stats["iters"] == 3 and len(stats["times_ms"]) == 3


def test_table_and_json(tmp_path):
    table = common.format_table([{"name": "a", "ms": 1.5}, {"name": "long name", "ms": None}],
                                [("model", "name", "{}"), ("ms", "ms", "{:.2f}")])
    lines = table.splitlines()
    assert lines[0].split() == ["model", "ms"] and lines[2].endswith("1.50") and lines[3].endswith("-")
    assert len({len(line) for line in lines[:3]}) == 1  # aligned columns
    path = common.write_json(tmp_path / "sub" / "r.json", {"x": [1, 2]})
    assert read(path) == {"x": [1, 2]}


def test_parse_size():
    assert common.parse_size("480x640") == (480, 640)
    assert common.parse_list("480x640,800x1067", common.parse_size) == [(480, 640), (800, 1067)]
    with pytest.raises(Exception):
        common.parse_size("640")


# ---- the scripts on CPU -----------------------------------------------------------------------------

@pytest.mark.slow
def test_inference_device_input(tmp_path):
    out = tmp_path / "inference.json"
    payload = inference.main(["--device", "cpu", *FAST, *TINY_INFERENCE, "--batch-sizes", "1,2",
                              "--modes", "fp32", "--out", str(out)])
    assert read(out) == json.loads(json.dumps(payload))
    check_common(payload, "inference")
    rows = payload["results"]
    assert {(r["model"], r["batch_size"]) for r in rows} == {("condinst", 1), ("maskrcnn", 1),
                                                               ("condinst", 2), ("maskrcnn", 2)}
    for row in rows:
        assert TIMING_KEYS <= set(row)
        assert row["detections_per_image"] == [100] * row["batch_size"]
        assert row["image_size"] == [96, 128] and row["peak_allocated_mb"] is None
    assert len(payload["comparisons"]) == 2
    for comp in payload["comparisons"]:
        assert comp["ratio_ours_over_torchvision"] == pytest.approx(
            comp["condinst_ms_per_image"] / comp["maskrcnn_ms_per_image"])
    models = payload["models"]
    assert models["condinst"]["score_threshold"] == 0.0 and models["condinst"]["post_nms_topk"] == 100
    assert models["condinst"]["topk_ties"] == "exact"
    assert models["maskrcnn"]["score_threshold"] == 0.0 and models["maskrcnn"]["detections_per_img"] == 100


def test_inference_host_input_fast_mode(tmp_path):
    out = tmp_path / "inference_host.json"
    payload = inference.main(["--device", "cpu", *FAST, *TINY_INFERENCE, "--batch-sizes", "1", "--modes", "fast",
                              "--input", "host", "--nms-off", "--out", str(out)])
    check_common(read(out), "inference")
    for row in payload["results"]:
        assert row["mode"] == "fast" and row["detections_per_image"] == [100]
        assert "channels_last" in row["precision"] and "no autocast on CPU" in row["precision"]
    assert payload["models"]["condinst"]["nms_threshold"] == 1.0
    assert payload["models"]["maskrcnn"]["nms_threshold"] == 1.0


def test_mask_head(tmp_path):
    out = tmp_path / "mask_head.json"
    payload = mask_head.main(["--device", "cpu", *FAST, "--image-size", "64x96", "--instances", "10,50",
                              "--out", str(out)])
    check_common(read(out), "mask_head")
    rows = payload["results"]
    assert [(r["instances"], r["dtype"]) for r in rows] == [(10, "fp32"), (50, "fp32")]
    for row in rows:
        assert TIMING_KEYS <= set(row)
        assert row["mask_feats_shape"] == [1, 8, 8, 12]  # stride 8 of 64x96
        assert row["output_shape"] == [row["instances"], 1, 16, 24]  # stride 4


def test_sipmask_rescoring_rows_for_both_methods(tmp_path):
    out = tmp_path / "sipmask_rescoring.json"
    payload = sipmask_rescoring.main(["--device", "cpu", *FAST, "--image-sizes", "320x416", "--positives", "4",
                                      "--classes", "3", "--out", str(out)])
    check_common(read(out), "sipmask_rescoring")
    rows = payload["results"]
    assert [(r["positives"], r["method"]) for r in rows] == [(4, "crops"), (4, "whole map")]
    for row in rows:
        assert TIMING_KEYS <= set(row) and row["mask_map"] == [160, 208]


@pytest.mark.slow
def test_train_step(tmp_path):
    out = tmp_path / "train_step.json"
    payload = train_step.main(["--device", "cpu", *FAST, "--tiny", "--batch-size", "2", "--image-size", "128x160",
                               "--instances-per-image", "3", "--out", str(out)])
    check_common(read(out), "train_step")
    rows = payload["results"]
    assert [(r["model"], r["amp"]) for r in rows] == [("condinst", "off"), ("maskrcnn", "off")]
    for row in rows:
        assert TIMING_KEYS <= set(row)
        assert row["batch_size"] == 2 and row["channels_last"] is False
        assert row["losses_finite"] and "total_loss" in row["last_losses"]
        assert row["peak_allocated_mb"] is None
    assert {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask"} <= set(rows[0]["last_losses"])
    assert "loss_mask" in rows[1]["last_losses"]  # torchvision's own loss dict
    assert payload["comparisons"][0]["amp"] == "off"


@pytest.mark.slow
def test_train_step_sipmask_row_with_cpu_time_and_profile(tmp_path):
    """--models sipmask adds a SipMask row (its official losses); --profile stores the top operators."""
    out = tmp_path / "train_step.json"
    payload = train_step.main(["--device", "cpu", "--iters", "1", "--warmup", "0", "--threads", "1", "--tiny",
                               "--batch-size", "2", "--image-size", "128x160", "--instances-per-image", "3",
                               "--models", "sipmask", "--sipmask-config", "sipmask_r50_caffe_fpn_gn_1x",
                               "--profile", "5", "--out", str(out)])
    (row,) = read(out)["results"]
    assert row["model"] == "sipmask" and row["config"] == "sipmask_r50_caffe_fpn_gn_1x_tiny"
    assert row["losses_finite"] and {"loss_cls", "loss_bbox", "loss_centerness", "loss_mask"} <= set(row["last_losses"])
    assert 0 < row["cpu_ms"] and len(row["profile"]) == 5
    shares = [op["share"] for op in row["profile"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1
    assert all(op["operator"] and op["calls"] >= 1 and op["self_cpu_ms"] > 0 for op in row["profile"])
    assert payload["comparisons"] == []


def test_cpu_latency_with_a_default_model(tmp_path):
    from bench.models import condinst_config, give_boxes_extent
    from condinst.checkpoint import save_checkpoint
    from condinst.model import CondInst

    cfg = condinst_config(tiny=True)
    cfg.fcos.num_classes = 3
    cfg.input.min_size_test, cfg.input.max_size_test = 128, 192
    weights = save_checkpoint(tmp_path / "model.pth", give_boxes_extent(CondInst(cfg)), cfg)
    out = tmp_path / "cpu_latency.json"
    payload = cpu_latency.main([*FAST, "--tiny", "--image-size", "96x128", "--min-size", "128", "--max-size", "192",
                                "--default-weights", str(weights), "--out", str(out)])
    check_common(read(out), "cpu_latency")
    rows = {r["model"]: r for r in payload["results"]}
    assert set(rows) == {"default", "condinst", "maskrcnn", "sipmask_544", "sipmask_r50"}
    for row in rows.values():
        assert not row["skipped"] and row["detections"] == 100 and TIMING_KEYS <= set(row)
    assert rows["default"]["input_size"] == [128, 171]
    assert rows["sipmask_544"]["input_size"] == [128, 128]  # the real-time model ignores the ratio
    assert rows["sipmask_r50"]["input_size"] == [128, 171]  # mmcv imrescale to (192, 128)
    assert payload["environment"]["torch_threads"] == 1
    assert {c["model"] for c in payload["comparisons"]} == {"default", "condinst", "sipmask_544", "sipmask_r50"}


def test_cpu_latency_skips_a_missing_default_model(tmp_path):
    args = cpu_latency.parse_args(["--default-weights", str(tmp_path / "missing.pth")])
    assert args.threads == 2 and args.device == "cpu"  # the documented defaults
    row = cpu_latency.default_model_row(np.zeros((60, 80, 3), np.uint8), args, torch.device("cpu"))
    assert row["skipped"] and "not found" in row["note"]


def test_video_reports_fps_and_tracking_overhead(tmp_path):
    out = tmp_path / "video.json"
    payload = video.main(["--threads", "1", "--tiny", "--frames", "4", "--frame-size", "96x128", "--batch-size", "2",
                          "--detections", "5", "--r50-min-size", "128", "--r50-max-size", "192", "--out", str(out)])
    check_common(read(out), "video")
    rows = {r["model"]: r for r in payload["results"]}
    assert set(rows) == ({"default", "r50"} if video.DEFAULT_WEIGHTS.is_file() else {"r50"})
    assert rows["r50"]["detections_per_frame"] == 5 and rows["r50"]["input_size"] == [128, 171]
    for row in rows.values():
        assert row["frames"] == 4 and row["model_ms_per_frame"] > 0
        for kind in ("condinst", "bytetrack"):
            assert row[f"{kind}_ms_per_frame"] > 0 and row[f"{kind}_fps"] > 0
            assert row[f"{kind}_overhead_pct"] == pytest.approx(100 * row[f"{kind}_ms_per_frame"] / row["model_ms_per_frame"])
    assert rows["r50"]["condinst_tracks"] >= 1


def test_scripts_run_as_files():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "mask_head.py"), "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=scaled(120))
    assert result.returncode == 0, result.stderr
    assert "--instances" in result.stdout


# ---- GPU variants -----------------------------------------------------------------------------------

@pytest.mark.gpu
def test_inference_cuda_fast_mode(tmp_path):
    payload = inference.main(["--device", "cuda", *FAST, *TINY_INFERENCE, "--batch-sizes", "1,2",
                              "--out", str(tmp_path / "inference.json")])
    check_common(payload, "inference", device="cuda")
    for row in payload["results"]:
        assert row["detections_per_image"] == [100] * row["batch_size"]
        assert row["peak_allocated_mb"] > 0
        if row["mode"] == "fast":
            assert "autocast bfloat16" in row["precision"]


@pytest.mark.gpu
def test_mask_head_cuda_bf16(tmp_path):
    payload = mask_head.main(["--device", "cuda", *FAST, "--image-size", "64x96", "--instances", "10",
                              "--out", str(tmp_path / "mask_head.json")])
    assert [r["dtype"] for r in payload["results"]] == ["fp32", "bf16"]
    assert [r["head_dtype"] for r in payload["results"]] == ["float32", "bfloat16"]
    assert payload["results"][1]["output_dtype"] == "float32"  # autocast upsamples in float32


def test_mask_head_bf16_runs_its_products_in_bf16_on_cpu(tmp_path):
    payload = mask_head.main(["--device", "cpu", *FAST, "--image-size", "64x96", "--instances", "10",
                              "--dtypes", "fp32,bf16", "--out", str(tmp_path / "mask_head.json")])
    assert [r["head_dtype"] for r in payload["results"]] == ["float32", "bfloat16"]
    assert [r["output_dtype"] for r in payload["results"]] == ["float32", "float32"]


@pytest.mark.gpu
def test_train_step_cuda_amp(tmp_path):
    payload = train_step.main(["--device", "cuda", *FAST, "--tiny", "--batch-size", "2", "--image-size", "128x160",
                               "--amp", "bf16,fp16", "--out", str(tmp_path / "train_step.json")])
    for row in payload["results"]:
        assert row["channels_last"] is True and row["peak_allocated_mb"] > 0


@pytest.mark.slow
def test_memory_per_size_in_subprocesses(tmp_path):
    from bench import memory

    out = tmp_path / "memory.json"
    payload = memory.main(["--megapixels", "0.05", "--threads", "1", "--out", str(out)])
    check_common(read(out), "memory")
    (row,) = payload["results"]
    assert row["status"] == "ok" and row["predict_returncode"] == 0 and row["image_size"] == [194, 258]
    assert row["predict_peak_mb"] > 50 and isinstance(row["detections"], int)
    assert [s["stage"] for s in row["stages"]] == list(memory.STAGES)
    peaks = [s["peak_mb"] for s in row["stages"]]
    assert peaks == sorted(peaks)  # peak so far: never decreases
    assert row["postprocess_added_mb"] == row["postprocess_mb"] - row["network_mb"]


def test_memory_guard_stops_a_process_past_the_limit(tmp_path):
    from bench import memory

    # the child holds its 300 MB far longer than the guard needs: returncode -9 and its reading say the guard stopped it
    hold = f"import time; x = bytearray(300 * 2**20); time.sleep({scaled(600):.0f})"
    run = memory.watch([sys.executable, "-c", hold], limit_mb=100, env={"PATH": "/usr/bin:/bin"})
    assert run["killed_at_mb"] > 100 and run["returncode"] == -9


@pytest.mark.slow
def test_memory_video_row_runs_the_video_command(tmp_path):
    from bench import memory

    out = tmp_path / "memory.json"
    payload = memory.main(["--megapixels", "", "--video-frames", "6", "--video-size", "64x96", "--video-detections",
                           "5", "--threads", "1", "--out", str(out)])
    assert read(out)["video_results"] == payload["video_results"] and payload["results"] == []
    (row,) = payload["video_results"]
    assert row["returncode"] == 0 and row["frames"] == 6 and row["peak_mb"] > 50 and row["masks"] > 0, row


def test_import_throughput_runs_and_counts_every_annotation(tmp_path):
    from bench import import_throughput

    out = tmp_path / "import.json"
    assert import_throughput.main(["--coco", "300", "--yolo", "200", "--per-image", "100", "--image-size", "40x60",
                                   "--out", str(out)]) == 0
    rows = read(out)["results"]
    assert [(r["format"], r["annotations"], r["images"]) for r in rows] == [("coco", 300, 3), ("yolo", 200, 2)]
    assert all(r["annotations_per_s"] > 0 and r["cpu_s"] > 0 for r in rows)


# ---- backends: interleaved timing; peers from scratch --------------------------------------------------

class _StagedPredictor:
    """A predictor whose three stages record the order of the calls it gets (prepare / graph / finish)."""

    def __init__(self, name: str, log: list[str], detections: int):
        self.name, self.log, self.detections, self.cfg = name, log, detections, None
        self.model = self

    def prepare(self, images):
        self.log.append(self.name)
        return torch.zeros(1, 3, 8, 8), [(8, 8)]

    def inference(self, batch, sizes, cfg):
        return ["instances"]

    def finish(self, instances, padded_size, input_sizes, image_sizes):
        return [list(range(self.detections))]


def test_interleaved_times_every_backend_once_per_round():
    from bench.backend_profile import interleaved

    log: list[str] = []
    cases = {"a": _StagedPredictor("a", log, 3), "b": _StagedPredictor("b", log, 2)}
    images = [np.zeros((8, 8, 3), np.uint8)] * 2
    out = interleaved(cases, images, rounds=3, warmup=1)
    assert log == ["a", "a", "b", "b"] * 4  # round-robin: (warm-up + 3 rounds) x (a's 2 images, then b's)
    assert out["a"]["ratio_to_first"] == 1.0
    assert out["b"]["rounds"] == 3 and len(out["b"]["per_round_ms"]) == 3
    assert out["a"]["detections"] == 6 and out["b"]["detections"] == 4
    assert set(out["b"]["stages_ms"]) == {"prepare", "graph", "finish"}
    assert out["b"]["ms_per_image"] == pytest.approx(float(np.median(out["b"]["per_round_ms"])))


@pytest.mark.slow
def test_peers_smoke_scores_each_peer_with_one_evaluator(tmp_path):
    from bench import peers

    if not (peers.DATA / "trainval.json").is_file():
        pytest.skip(f"no {peers.DATA}")
    missing = tmp_path / "no-venv" / "bin" / "python"  # the Ultralytics venv absent: its rows skip with a note
    out = tmp_path / "peers.json"
    result = subprocess.run([sys.executable, "-m", "bench.peers", "--smoke", "--peers", "condinst,maskrcnn,yolov8n-seg",
                             "--yolo-python", str(missing), "--work-dir", str(tmp_path / "work"), "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=scaled(1500),
                            env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    payload = read(out)
    assert payload["benchmark"] == "peers"
    assert [row["peer"] for row in payload["rows"]] == ["condinst", "maskrcnn"]
    assert any("Ultralytics rows skipped" in note for note in payload["notes"])
    for row in payload["rows"]:
        assert "error" not in row, row.get("error")
        assert set(row["metrics"]) == {"bbox", "segm"}
        assert row["params_m"] > 0 and row["train_rss_mb"] > 0 and row["PyTorch_ms"] > 0
    assert "Ultralytics rows skipped" in result.stdout
