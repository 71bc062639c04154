#!/usr/bin/env bash
# bench/run_aggops.sh — the aggregator ops (bench_aggops) and PyTorch's int32
# sum, fp32 weighted sum and copy (torch_aggops.py) side by side, in one run,
# on one device, on the same sizes; prints each op's fraction of the copy
# bandwidth measured in that run and the fedseg / PyTorch ratios.
#
#   bench/run_aggops.sh                       # CUDA when present, else CPU
#   DEVICE=cpu N=2000000 K=20 bench/run_aggops.sh
#
# Environment:
#   DEVICE  cuda or cpu (default: cuda when fedseg and PyTorch both see a GPU)
#   N       parameters per update (default 7766372, the ref model; CPU default 2000000)
#   K       updates (default 100; CPU default 20)   REPS  timed calls (default 10; CPU 3)
#   THREADS CPU threads for both sides (default 0 = all)
#   BUILD   build folder (default build-gpu/ for cuda, build/ for cpu); configured and
#           built (target bench_aggops) when needed
#   PYTHON  interpreter with PyTorch (default: python3 whose torch sees a GPU, else /usr/bin/python3)
#   OUT     folder for the results (default: a new folder under /tmp)
# Writes OUT/fedseg_aggops.jsonl, OUT/torch_aggops.jsonl. Exit 1 when a correctness
# check of bench_aggops fails or the build fails.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=/usr/bin/python3
  for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      PYTHON=$p; break
    fi
  done
fi
if [[ -z "${DEVICE:-}" ]]; then
  DEVICE=cpu
  command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && DEVICE=cuda
fi
if [[ $DEVICE == cuda ]]; then
  N=${N:-7766372}; K=${K:-100}; REPS=${REPS:-10}; BUILD=${BUILD:-$ROOT/build-gpu}
else
  N=${N:-2000000}; K=${K:-20}; REPS=${REPS:-3}; BUILD=${BUILD:-$ROOT/build}
fi
THREADS=${THREADS:-0}
if [[ -n "${OUT:-}" ]]; then mkdir -p "$OUT"; else OUT=$(mktemp -d /tmp/fedseg-aggops.XXXXXX); fi

if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$BUILD" -j "$(nproc)" --target bench_aggops
status=0
echo "fedseg: bench_aggops --device $DEVICE --n $N --k $K --reps $REPS --threads $THREADS"
"$BUILD/bench/bench_aggops" --device "$DEVICE" --n "$N" --k "$K" --reps "$REPS" \
  --threads "$THREADS" --json | tee "$OUT/fedseg_aggops.jsonl" || status=1
echo "PyTorch ($PYTHON): torch_aggops.py --device $DEVICE"
"$PYTHON" "$ROOT/bench/torch_aggops.py" --device "$DEVICE" --n "$N" --k "$K" --reps "$REPS" \
  --threads "$THREADS" | tee "$OUT/torch_aggops.jsonl" || status=1

echo
python3 - "$OUT/fedseg_aggops.jsonl" "$OUT/torch_aggops.jsonl" <<'PY'
import json, sys
def load(p):
    rows = []
    for l in open(p):
        l = l.strip()
        if l.startswith("{"):
            rows.append(json.loads(l))
    return rows
fs = {r["op"]: r for r in load(sys.argv[1]) if "op" in r}
th = {r["op"]: r for r in load(sys.argv[2]) if "op" in r}
for r in load(sys.argv[1]) + load(sys.argv[2]):
    if "skipped" in r:
        print(f"{r['side']}: skipped ({r['skipped']})")
if not fs:
    sys.exit(0)
print(f"{'op':<15}{'ms':>10}{'GB/s':>10}{'read GB/s':>11}{'of copy':>9}   target >= 90% of copy")
for op, r in fs.items():
    mark = "" if op == "copy" else ("ok" if r["frac_of_copy"] >= 0.9 else "BELOW")
    print(f"fedseg {op:<8}{r['ms']:>10.3f}{r['GBps']:>10.1f}{r['read_GBps']:>11.1f}{100*r['frac_of_copy']:>8.1f}%   {mark}")
for op, r in th.items():
    frac = f"{100*r['frac_of_copy']:>8.1f}%" if "frac_of_copy" in r else ""
    print(f"torch  {op:<8}{r['ms']:>10.3f}{r['GBps']:>10.1f}{r['read_GBps']:>11.1f}{frac}")
print()
for mine, theirs in (("u32_sum", "int32_sum"), ("fold_many", "fp32_wsum"), ("copy", "copy")):
    if mine in fs and theirs in th:
        a, b = fs[mine], th[theirs]
        print(f"{mine} vs torch {theirs}: time ratio fedseg/torch {a['ms']/b['ms']:.2f}, "
              f"read bandwidth ratio {a['read_GBps']/b['read_GBps']:.2f}")
PY
echo "results in $OUT"
exit $status
