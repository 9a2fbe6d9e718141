"""Speed and mask AP of the bundled model: fp32 / INT8 x PyTorch / ONNX Runtime / OpenVINO, one run.

    python bench/backends.py [--rounds 15] [--threads 2] [--no-r50] [--no-sipmask] [--profile 5]

Exports the bundled model (assets/default_model/model.pth) as the whole graph, fp32 and INT8
(calibrated on the training split's images), evaluates mask and box AP on its held-out images (ids
15 16 17 of shared/datasets/fruits_nuts, as `make default-model`) and times the full prediction
(preprocessing, graph, mask pasting) per image: every backend once per round, `--rounds` rounds in turn
(bench/backend_profile.py), so that a busy machine's load falls on all backends alike; the table has the
median ms/image, its ratio to PyTorch within each round (median: the ranking statistic), and the three
stages; `--profile N` adds ONNX Runtime's operator profile of the fp32 and INT8 graphs (which operators
stay in fp32, where the time goes). Every runtime gets `--threads` threads (default 2). Then the same for the R-50 layout (preset MS_R_50_1x,
random weights forced to 100 detections an image: speed only, no AP) on the held-out photos at
800 px, INT8 calibrated on four training photos, with the parity of its ONNX Runtime graph against
PyTorch on the first photo (classes, largest box and score differences, smallest mask IoU). Then SipMask
real-time R-50 (preset sipmask_r50_caffe_fpn_ssd_6x, random weights forced to 100 detections, 544x544):
PyTorch against its whole graph in each runtime, with the same parity. Prints a table, writes
bench/results/backends.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

# Before torch loads OpenMP: idle PyTorch threads sleep, as ONNX Runtime's do (condinst/export.py); spinning ones
# made PyTorch 6x slower than ONNX Runtime on a busy machine (bench/README.md). Set the variable to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.backend_profile import interleaved, op_profile  # noqa: E402
from bench.common import add_common_args, environment, format_table, setup, time_fn, write_json  # noqa: E402

DATA = Path(os.environ.get("CONDINST_SHARED", ROOT.parent / "shared")) / "datasets" / "fruits_nuts" / "data"
WEIGHTS = ROOT / "assets" / "default_model" / "model.pth"
VAL_IDS = {15, 16, 17}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "backends", iters=5, warmup=1)
    parser.add_argument("--rounds", type=int, default=15,
                        help="bundled model: timed rounds, every backend once per round in turn (median; default 15)")
    parser.add_argument("--profile", type=int, default=0, metavar="RUNS",
                        help="also ONNX Runtime's operator profile of the fp32 and INT8 graphs over RUNS runs")
    parser.add_argument("--no-r50", action="store_true", help="leave out the R-50 rows (minutes on 2 cores)")
    parser.add_argument("--no-bundled", action="store_true", help="leave out the bundled model's rows")
    parser.add_argument("--no-sipmask", action="store_true", help="leave out the SipMask real-time R-50 rows")
    parser.set_defaults(threads=2)
    args = parser.parse_args()
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads must be >= 1")
    device = setup(args)
    import importlib.util
    import json

    from condinst.export import export_onnx
    from condinst.predictor import Predictor, load_model
    from condinst.preprocess import read_image
    from training.evaluation import evaluate

    data = json.loads((DATA / "trainval.json").read_text())
    train_images = [read_image(DATA / "images" / im["file_name"]) for im in data["images"] if im["id"] not in VAL_IDS]
    tmp = Path(tempfile.mkdtemp())
    split = tmp / "split"
    import subprocess

    subprocess.run([sys.executable, str(ROOT / "tools" / "split_coco.py"), "--ann", str(DATA / "trainval.json"),
                    "--val-ids", *map(str, sorted(VAL_IDS)), "--out-dir", str(split)], check=True, capture_output=True)
    backends = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    dataset = _dataset(split / "val.json")
    images = [record["image"] for record in dataset]
    cases = []
    if not args.no_bundled:
        model, cfg = load_model(WEIGHTS)
        fp32 = export_onnx(model.optimize_for_inference(), cfg, tmp / "fp32.onnx")
        from condinst.quantize import quantize_int8

        int8 = quantize_int8(fp32, tmp / "int8.onnx", train_images)
        cases = [("PyTorch", "fp32", lambda: Predictor.from_weights(WEIGHTS))]  # the first: ratios are to it
        for backend in backends:
            for precision, path in (("fp32", fp32), ("INT8", int8)):
                cases.append((backend, precision, lambda b=backend, p=path: Predictor.from_weights(
                    p, threads=args.threads, backend=b)))
    rows, profiles = [], {}
    if cases:
        predictors = {}
        for runtime, precision, make in cases:
            predictor = predictors[runtime, precision] = make()
            out = evaluate(predictor, dataset, log_summary=False, progress=False)
            rows.append({"model": "bundled", "runtime": runtime, "precision": precision,
                         "mask_ap": 100 * out.metrics["segm"]["AP"], "box_ap": 100 * out.metrics["bbox"]["AP"],
                         "detections": out.num_detections})
        timing = interleaved({f"{r} {p}": predictor for (r, p), predictor in predictors.items()}, images,
                             args.rounds, args.warmup)
        for row in rows:
            t = timing[f"{row['runtime']} {row['precision']}"]
            row.update(ms_per_image=t["ms_per_image"], min_ms=t["min_ms"], iqr_ms=t["iqr_ms"],
                       vs_pytorch=t["ratio_to_first"], **{f"{k}_ms": v for k, v in t["stages_ms"].items()}, timing=t)
            print(f"{row['runtime']} {row['precision']}: {row['ms_per_image']:.0f} ms/image "
                  f"(x{row['vs_pytorch']:.2f} PyTorch), mask AP {row['mask_ap']:.2f}", file=sys.stderr)
        if args.profile:
            onnx_model = predictors["onnxruntime", "fp32"].model

            def feeds():
                out = []
                for image in images:
                    batch, sizes = predictors["onnxruntime", "fp32"].prepare([image])
                    out.append(onnx_model.feeds(batch, sizes[0], onnx_model.cfg))
                return out

            profiles = {name: op_profile(path, feeds, args.threads, args.profile) for name, path in
                        (("fp32", fp32), ("INT8", int8))}
            for name, profile in profiles.items():
                top = ", ".join(f"{op} {e['ms_per_run']:.1f} ms ({e['nodes']})" for op, e in
                                list(profile["ops"].items())[:8])
                print(f"ORT {name} graph {profile['total_ms_per_run']:.1f} ms/run: {top}; int8 compute "
                      f"{100 * profile['int8_compute_share']:.0f} %, Q/DQ {100 * profile['quantize_dequantize_share']:.0f}"
                      f" %, fp32 {100 * profile['fp32_share']:.0f} %", file=sys.stderr)
    parity = sipmask_parity = None
    if not args.no_r50:
        r50_rows, parity = _r50(tmp, images, train_images[:4], backends, args, device)
        rows += r50_rows
    if not args.no_sipmask:
        sipmask_rows, sipmask_parity = _sipmask(tmp, images, backends, args, device)
        rows += sipmask_rows
    print(format_table(rows, [("model", "model", "{}"), ("runtime", "runtime", "{}"), ("precision", "precision", "{}"),
                              ("ms/image", "ms_per_image", "{:.0f}"), ("min", "min_ms", "{:.0f}"),
                              ("x PyTorch", "vs_pytorch", "{:.2f}"), ("prepare", "prepare_ms", "{:.0f}"),
                              ("graph", "graph_ms", "{:.0f}"), ("finish", "finish_ms", "{:.0f}"),
                              ("mask AP", "mask_ap", "{:.2f}"),
                              ("box AP", "box_ap", "{:.2f}"), ("detections", "detections", "{}")]))
    if parity:
        print(f"R-50 parity, ONNX Runtime vs PyTorch: {parity}")
    if sipmask_parity:
        print(f"SipMask real-time parity vs PyTorch: {sipmask_parity}")
    write_json(args.out, {"benchmark": "backends", "model": str(WEIGHTS.relative_to(ROOT)), "rows": rows,
                          "ort_op_profiles": profiles, "load_average": os.getloadavg(),
                          "r50_parity": parity, "sipmask_parity": sipmask_parity, "environment": environment(device),
                          "images": len(images)})


def _r50(tmp: Path, images: list, calibration: list, backends: list[str], args, device):
    """Rows of the R-50 layout (random weights: ms/image only) and its ORT-vs-PyTorch parity on images[0]."""
    from condinst.export import export_onnx
    from condinst.predictor import Predictor
    from condinst.quantize import quantize_int8

    from bench.models import build_condinst, condinst_config, force_detections
    from condinst.checkpoint import save_checkpoint

    cfg = force_detections(condinst_config("MS_R_50_1x"))  # random weights: 100 detections an image
    model = build_condinst(cfg, device)
    weights = save_checkpoint(tmp / "r50.pth", model, cfg)
    fp32 = export_onnx(model.optimize_for_inference(), cfg, tmp / "r50_fp32.onnx")
    int8 = quantize_int8(fp32, tmp / "r50_int8.onnx", calibration)
    cases = [("PyTorch", "fp32", lambda: Predictor.from_weights(weights))]
    cases += [(b, "fp32", lambda b=b: Predictor.from_weights(fp32, threads=args.threads, backend=b)) for b in backends]
    cases += [("onnxruntime", "INT8", lambda: Predictor.from_weights(int8, threads=args.threads))]
    rows, results = [], {}
    for runtime, precision, make in cases:
        predictor = make()
        results[runtime, precision] = predictor(images[0])[0]
        timing = time_fn(lambda: [predictor(im) for im in images], device, args.iters, args.warmup,
                         batch_size=len(images))
        rows.append({"model": "R-50 (MS_R_50_1x)", "runtime": runtime, "precision": precision,
                     "ms_per_image": timing["ms_per_image"], "detections": len(results[runtime, precision]),
                     "timing": timing})
        print(f"R-50 {runtime} {precision}: {timing['ms_per_image']:.0f} ms/image", file=sys.stderr)
    return rows, _parity(results["PyTorch", "fp32"], results["onnxruntime", "fp32"])


def _sipmask(tmp: Path, images: list, backends: list[str], args, device):
    """SipMask real-time R-50 rows (random weights, 100 detections an image: ms/image only), PyTorch and
    its whole graph in each runtime, and the parity of each runtime against PyTorch on images[0]."""
    from condinst.checkpoint import save_checkpoint
    from condinst.export import export_onnx
    from condinst.predictor import Predictor

    from bench.models import build_sipmask, force_detections, sipmask_config

    cfg = force_detections(sipmask_config("sipmask_r50_caffe_fpn_ssd_6x"))
    weights = save_checkpoint(tmp / "sipmask.pth", build_sipmask(cfg, device), cfg)
    onnx_path = export_onnx(Predictor.from_weights(weights).model, cfg, tmp / "sipmask.onnx")
    cases = [("PyTorch", lambda: Predictor.from_weights(weights))]
    cases += [(b, lambda b=b: Predictor.from_weights(onnx_path, threads=args.threads, backend=b)) for b in backends]
    rows, results = [], {}
    for runtime, make in cases:
        predictor = make()
        results[runtime] = predictor(images[0])[0]
        timing = time_fn(lambda: [predictor(im) for im in images], device, args.iters, args.warmup,
                         batch_size=len(images))
        rows.append({"model": "SipMask real-time R-50 (544)", "runtime": runtime, "precision": "fp32",
                     "ms_per_image": timing["ms_per_image"], "detections": len(results[runtime]), "timing": timing})
        print(f"SipMask {runtime}: {timing['ms_per_image']:.0f} ms/image", file=sys.stderr)
    return rows, {b: _parity(results["PyTorch"], results[b]) for b in backends}


def _parity(a, b) -> dict:
    """Detections `b` of a runtime against PyTorch's `a` of the same image, rows matched by the cell and
    class that fired: counts, classes equal, largest box and score differences, smallest mask IoU."""
    import numpy as np

    parity = {"detections": [len(a), len(b)]}
    if len(a) == len(b) > 0:
        key = lambda r: [(int(l), int(g), int(c)) for l, g, c in zip(r.detections.fpn_levels,  # noqa: E731
                                                                      r.detections.grid_index, r.classes)]
        order = [key(b).index(k) for k in key(a)]
        ma, mb = a.masks.numpy(), b.masks[order].numpy()
        union = (ma | mb).sum(axis=(1, 2))
        iou = np.where(union > 0, (ma & mb).sum(axis=(1, 2)) / np.maximum(union, 1), 1.0)
        parity.update(classes_equal=bool((a.classes == b.classes[order]).all()),
                      max_box_diff_px=float((a.boxes - b.boxes[order]).abs().max()),
                      max_score_diff=float((a.scores - b.scores[order]).abs().max()), min_mask_iou=float(iou.min()))
    return parity


def _dataset(ann: Path):
    from training.data import CocoInstances

    return CocoInstances(ann, DATA / "images")


if __name__ == "__main__":
    main()
