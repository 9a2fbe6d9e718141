#!/usr/bin/env bash
# Run the four benchmarks with sensible defaults; the JSON results go to bench/results/.
#
#   bench/run_all.sh                                   # on the GPU when there is one, else a short CPU run
#   PYTHON=.venv/bin/python bench/run_all.sh
#   DEVICE=cpu bench/run_all.sh                        # force the CPU settings
#
# On a GPU this takes a few minutes; see bench/README.md for what each script measures.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python}"
OUT="${OUT:-bench/results}"
if [ -z "${DEVICE:-}" ]; then
    DEVICE=$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi
mkdir -p "$OUT"
echo "== device: $DEVICE, results in $OUT"

if [ "$DEVICE" = "cpu" ]; then
    # Full-size R-50 models on the CPU are slow: fewer iterations, batch 1, fp32 only.
    "$PYTHON" -m bench.inference --device cpu --batch-sizes 1 --modes fp32 --iters 5 --warmup 1 \
        --out "$OUT/inference.json"
    "$PYTHON" -m bench.mask_head --device cpu --iters 20 --warmup 3 --out "$OUT/mask_head.json"
    "$PYTHON" -m bench.train_step --device cpu --batch-size 2 --iters 2 --warmup 1 --out "$OUT/train_step.json"
    "$PYTHON" -m bench.sipmask_rescoring --device cpu --iters 3 --warmup 1 --out "$OUT/sipmask_rescoring.json"
else
    "$PYTHON" -m bench.inference --device "$DEVICE" --out "$OUT/inference.json"
    # The public API from numpy images in host memory (fp32 = PIL resize on the host, the reference pipeline).
    "$PYTHON" -m bench.inference --device "$DEVICE" --input host --batch-sizes 1 --out "$OUT/inference_host.json"
    "$PYTHON" -m bench.mask_head --device "$DEVICE" --out "$OUT/mask_head.json"
    "$PYTHON" -m bench.train_step --device "$DEVICE" --batch-size 8 --amp off,bf16 --out "$OUT/train_step.json"
    "$PYTHON" -m bench.sipmask_rescoring --device "$DEVICE" --out "$OUT/sipmask_rescoring.json"
fi

"$PYTHON" -m bench.cpu_latency --threads 2 --out "$OUT/cpu_latency.json"
echo "== done: $(ls "$OUT"/*.json | tr '\n' ' ')"
