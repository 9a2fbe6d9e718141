"""Where a prediction's time goes, per backend: interleaved timing and ONNX Runtime's operator profile.

Used by bench/backends.py. `interleaved` times every case once per round, round after round, so that a
busy machine's load drifts over all cases alike; each case gets the median over rounds of its ms per
image, split into the predictor's three stages (prepare: resize + normalise + pad on the host; graph:
the network, decoding, NMS and the dynamic mask head; finish: boxes and masks pasted at the original
size), and its median per-round ratio to the first case (paired within a round: the ranking statistic).
`op_profile` runs an ONNX file in ONNX Runtime with its profiler on and sums the operators' own times by
type, so that an INT8 graph shows which operators stay in fp32 and what share of the time they take.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

INT8_COMPUTE = ("QLinear", "Integer")  # QLinearConv, ConvInteger, MatMulInteger, QLinearAdd, ...
CONVERSIONS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def staged_call(predictor, image: np.ndarray) -> tuple[float, float, float, int]:
    """(prepare, graph, finish) seconds of one `predictor(image)` and its number of detections."""
    import torch

    t0 = time.perf_counter()
    batch, sizes = predictor.prepare([image])
    t1 = time.perf_counter()
    with torch.no_grad():
        instances = predictor.model.inference(batch, sizes, predictor.cfg)
    t2 = time.perf_counter()
    result = predictor.finish(instances, tuple(batch.shape[-2:]), sizes, [image.shape[:2]])
    return t1 - t0, t2 - t1, time.perf_counter() - t2, len(result[0])


def interleaved(cases: dict[str, Any], images: list[np.ndarray], rounds: int, warmup: int) -> dict[str, dict]:
    """Time each predictor of `cases` (name -> Predictor) on `images`, round-robin, `rounds` times after
    `warmup` untimed rounds. Returns name -> {ms_per_image (median), p10/p90/min, stages_ms, ratio_to_first,
    per_round_ms, detections}."""
    from bench.common import summarize

    names = list(cases)
    per_round = {name: [] for name in names}
    stages = {name: [] for name in names}
    detections = {}
    for index in range(warmup + rounds):
        for name in names:
            calls = [staged_call(cases[name], image) for image in images]
            detections[name] = sum(c[3] for c in calls)
            if index >= warmup:
                per_round[name].append(1000 * sum(sum(c[:3]) for c in calls) / len(images))
                stages[name].append([1000 * sum(c[i] for c in calls) / len(images) for i in range(3)])
    first = names[0]
    out = {}
    for name in names:
        summary = summarize(per_round[name])
        ratios = [a / b for a, b in zip(per_round[name], per_round[first])]
        out[name] = {"ms_per_image": summary["median_ms"], "p10_ms": summary["p10_ms"], "p90_ms": summary["p90_ms"],
                     "min_ms": summary["min_ms"], "iqr_ms": summary["iqr_ms"], "rounds": rounds,
                     "stages_ms": {stage: statistics.median(s[i] for s in stages[name])
                                   for i, stage in enumerate(("prepare", "graph", "finish"))},
                     "ratio_to_first": statistics.median(ratios), "per_round_ms": per_round[name],
                     "detections": detections[name]}
    return out


def op_profile(path: str | Path, feeds_of: Callable[[], list[dict]], threads: int, runs: int = 5) -> dict:
    """ONNX Runtime's operator profile of the graph at `path`: own time (ms per graph run, summed over
    `runs` runs of every feed) and node count by operator type, and the shares of quantized vs fp32 ops."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = feeds_of()
    names = {i.name for i in session.get_inputs() + session.get_overridable_initializers()}
    for _ in range(runs):
        for feed in feeds:
            session.run(None, {k: v for k, v in feed.items() if k in names})
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    by_type: dict[str, dict] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        entry = by_type.setdefault(op, {"ms": 0.0, "nodes": set()})
        entry["ms"] += event["dur"] / 1000
        entry["nodes"].add(event["name"])
    calls = runs * len(feeds)
    table = {op: {"ms_per_run": e["ms"] / calls, "nodes": len(e["nodes"])} for op, e in by_type.items()}
    total = sum(e["ms_per_run"] for e in table.values()) or 1.0
    conversions = sum(e["ms_per_run"] for op, e in table.items() if op in CONVERSIONS)
    int8 = sum(e["ms_per_run"] for op, e in table.items() if op not in CONVERSIONS and any(q in op for q in INT8_COMPUTE))
    return {"ops": dict(sorted(table.items(), key=lambda kv: -kv[1]["ms_per_run"])), "total_ms_per_run": total,
            "int8_compute_share": int8 / total, "quantize_dequantize_share": conversions / total,
            "fp32_share": (total - int8 - conversions) / total}
