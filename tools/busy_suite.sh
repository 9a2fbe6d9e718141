#!/usr/bin/env bash
# The test suite on a busy machine: one spinning Python process per core (the load of a shared CI worker) runs
# for as long as pytest does; they are started here and stopped here by pid, whatever way pytest ends.
#
#   bash tools/busy_suite.sh -n 2 --dist loadfile --no-loadscope-reorder   # `make test-busy`; arguments go to pytest
#
# BUSY_LOOPS: how many spinning processes (default: one per core); PY: the Python (default .venv/bin/python).
# Prints the load average at the start, every minute's sample (min / mean / max) and pytest's exit code at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LOOPS=${BUSY_LOOPS:-$(nproc)}
SAMPLES=$(mktemp)
pids=()

stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -f "$SAMPLES"
}
trap stop EXIT
trap 'exit 130' INT TERM

for _ in $(seq "$LOOPS"); do
    "$PY" -c "while 1: pass" &
    pids+=($!)
done
(while sleep 60; do cut -d' ' -f1 /proc/loadavg >> "$SAMPLES"; done) &
pids+=($!)
echo "busy_suite: $LOOPS spinning processes (pids ${pids[*]:0:$LOOPS}); load average $(cut -d' ' -f1-3 /proc/loadavg)"

start=$(date +%s)
status=0
"$PY" -m pytest "$@" || status=$?
echo "busy_suite: pytest exited $status after $(( $(date +%s) - start )) s with $LOOPS cores' worth of spinning;" \
     "load average now $(cut -d' ' -f1-3 /proc/loadavg)," \
     "per minute $(awk 'NR == 1 {min = max = $1} {s += $1; if ($1 < min) min = $1; if ($1 > max) max = $1}
                        END {if (NR) printf "min %.1f mean %.1f max %.1f (%d samples)", min, s / NR, max, NR; else print "(under a minute)"}' "$SAMPLES")"
exit "$status"
