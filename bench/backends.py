"""Speed and mask AP of the bundled model: fp32 / INT8 x PyTorch / ONNX Runtime / OpenVINO, one run.

    python bench/backends.py [--iters 5] [--threads 2]

Exports the bundled model (assets/default_model/model.pth) as the whole graph, fp32 and INT8
(calibrated on the training split's images), evaluates mask and box AP on its held-out images (ids
15 16 17 of shared/datasets/fruits_nuts, as `make default-model`) and times the full prediction
(preprocessing, graph, mask pasting) per image. Prints a table, writes bench/results/backends.json.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import add_common_args, environment, format_table, setup, time_fn, write_json  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "fruits_nuts" / "data"
WEIGHTS = ROOT / "assets" / "default_model" / "model.pth"
VAL_IDS = {15, 16, 17}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "backends", iters=5, warmup=1)
    args = parser.parse_args()
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
    model, cfg = load_model(WEIGHTS)
    fp32 = export_onnx(model.optimize_for_inference(), cfg, tmp / "fp32.onnx")
    from condinst.quantize import quantize_int8

    int8 = quantize_int8(fp32, tmp / "int8.onnx", train_images)
    dataset = _dataset(split / "val.json")
    cases = [("PyTorch", "fp32", lambda: Predictor.from_weights(WEIGHTS))]
    backends = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for backend in backends:
        for precision, path in (("fp32", fp32), ("INT8", int8)):
            cases.append((backend, precision, lambda b=backend, p=path: Predictor.from_weights(p, threads=args.threads,
                                                                                          backend=b)))
    images = [record["image"] for record in dataset]
    rows = []
    for runtime, precision, make in cases:
        predictor = make()
        out = evaluate(predictor, dataset, log_summary=False)
        timing = time_fn(lambda: [predictor(im) for im in images], device, args.iters, args.warmup,
                         batch_size=len(images))
        rows.append({"runtime": runtime, "precision": precision, "ms_per_image": timing["ms_per_image"],
                     "mask_ap": 100 * out.metrics["segm"]["AP"], "box_ap": 100 * out.metrics["bbox"]["AP"],
                     "detections": out.num_detections, "timing": timing})
        print(f"{runtime} {precision}: {timing['ms_per_image']:.0f} ms/image, mask AP {rows[-1]['mask_ap']:.2f}",
              file=sys.stderr)
    print(format_table(rows, [("runtime", "runtime", "{}"), ("precision", "precision", "{}"),
                              ("ms/image", "ms_per_image", "{:.0f}"), ("mask AP", "mask_ap", "{:.2f}"),
                              ("box AP", "box_ap", "{:.2f}"), ("detections", "detections", "{}")]))
    write_json(args.out, {"benchmark": "backends", "model": str(WEIGHTS.relative_to(ROOT)), "rows": rows,
                          "environment": environment(device), "images": len(images)})


def _dataset(ann: Path):
    from training.data import CocoInstances

    return CocoInstances(ann, DATA / "images")


if __name__ == "__main__":
    main()
