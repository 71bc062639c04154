#!/usr/bin/env bash
# bench/run_cpu.sh — fedseg vs PyTorch training steps on this machine's CPU, side by
# side in one run (same machine, same thread count, same presets and batches).
#
#   bench/run_cpu.sh [THREADS]        (default 2)
#
# Environment:
#   BUILD    build folder (default: build/ in the repository); configured and
#            built (Release, target bench_step) when needed
#   MODELS   presets, comma-separated (default tiny,small)
#   STEPS    timed steps per preset (default 10)
#   WARMUP   untimed steps before timing (default 3; the loss must fall over them)
#   PYTHON   interpreter with PyTorch (default /usr/bin/python3; when it lacks
#            torch and we are root on Debian/Ubuntu, python3-torch is installed)
#   OUT      folder for the results (default: a new folder under /tmp)
#
# Writes OUT/fedseg_cpu.jsonl, OUT/torch_cpu.jsonl, OUT/machine_cpu.json and
# OUT/cpu_results.json (all of it plus the pairs and the target), and prints the
# table. Exit 1 when a build or a benchmark's correctness check fails.
set -euo pipefail

THREADS=${1:-2}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
MODELS=${MODELS:-tiny,small}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
PYTHON=${PYTHON:-/usr/bin/python3}
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
else
  OUT=$(mktemp -d /tmp/fedseg-bench-cpu.XXXXXX)
fi

case $THREADS in
  '' | *[!0-9]* | 0) echo "run_cpu.sh: THREADS must be a positive integer, got '$THREADS'" >&2; exit 2 ;;
esac

# --- build ---------------------------------------------------------------------
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$BUILD" -j "$(nproc)" --target bench_step
BENCH=$BUILD/bench/bench_step

# --- PyTorch ---------------------------------------------------------------------
if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "run_cpu.sh: PyTorch not found for $PYTHON; installing python3-torch" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch
    PYTHON=/usr/bin/python3
  else
    echo "run_cpu.sh: $PYTHON cannot import torch (install python3-torch, or set PYTHON)" >&2
    exit 1
  fi
fi

# --- machine ---------------------------------------------------------------------
"$PYTHON" - "$OUT/machine_cpu.json" "$THREADS" <<'EOF'
import json, os, platform, sys, time, torch
info = {}
try:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if ":" in line:
                k, v = (t.strip() for t in line.split(":", 1))
                info.setdefault(k, v)
except OSError:
    pass
simd = [x for x in ("avx2", "fma", "avx512f", "avx512_bf16") if x in info.get("flags", "").split()]
json.dump(dict(cpu=info.get("model name", "unknown"), cpu_family=info.get("cpu family"),
               cpu_model=info.get("model"), simd=simd, cores=os.cpu_count(), threads=int(sys.argv[2]),
               kernel=platform.release(), python=platform.python_version(),
               torch=torch.__version__, date=time.strftime("%Y-%m-%d %H:%M:%S %Z")),
          open(sys.argv[1], "w"), indent=1)
EOF
echo "machine: $(tr -d '\n' < "$OUT/machine_cpu.json" | tr -s ' ')"

# --- run both, one after the other ------------------------------------------------
status=0
echo "fedseg: $BENCH --device cpu --model $MODELS --threads $THREADS --steps $STEPS --warmup $WARMUP"
"$BENCH" --device cpu --model "$MODELS" --threads "$THREADS" --steps "$STEPS" --warmup "$WARMUP" \
  --json | tee "$OUT/fedseg_cpu.jsonl" || status=1
echo "PyTorch: torch_step.py --device cpu --model $MODELS --threads $THREADS"
"$PYTHON" "$ROOT/bench/torch_step.py" --device cpu --model "$MODELS" --threads "$THREADS" \
  --steps "$STEPS" --warmup "$WARMUP" | tee "$OUT/torch_cpu.jsonl" || status=1

echo
"$PYTHON" "$ROOT/bench/compare_steps.py" --fedseg "$OUT/fedseg_cpu.jsonl" \
  --torch "$OUT/torch_cpu.jsonl" --targets cpu --machine "$OUT/machine_cpu.json" \
  --out "$OUT/cpu_results.json" || status=1
exit $status
