#!/usr/bin/env bash
# bench/run_gpu.sh — fedseg vs PyTorch training steps on one CUDA GPU, side by side
# in one run: fedseg (CUDA backend, CUDA graph after the first step), then PyTorch
# eager fp32 and eager TF32 (and torch.compile TF32 with FS_TORCH_COMPILE=1), for
# tiny, small and ref at batch 32. ref at batch 32 is the headline figure.
#
#   bench/run_gpu.sh
#
# Environment:
#   BUILD    build folder (default: build-gpu/ in the repository); configured
#            (Release) and built (target bench_step) when needed
#   MODELS   presets (default tiny,small,ref)    BATCH  images per step (default 32)
#   STEPS    timed steps (default 50)            WARMUP untimed steps (default 5)
#   PYTHON   interpreter with a CUDA PyTorch (default: the first of python3,
#            /usr/bin/python3 whose torch sees a GPU)
#   OUT      folder for the results (default: a new folder under /tmp)
#
# Also times tiny once more with FS_NO_GRAPH=1 (eager launches) to show what the
# CUDA graph buys. Writes OUT/fedseg_cuda.jsonl, OUT/fedseg_cuda_nograph.jsonl,
# OUT/torch_cuda.jsonl, OUT/machine_gpu.json, OUT/gpu_results.json and prints the
# table with the ratios and the GPU targets. Exit 1 when the build or a
# correctness check fails, or when no CUDA device is usable by fedseg.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-gpu}
MODELS=${MODELS:-tiny,small,ref}
BATCH=${BATCH:-32}
STEPS=${STEPS:-50}
WARMUP=${WARMUP:-5}
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
else
  OUT=$(mktemp -d /tmp/fedseg-bench-gpu.XXXXXX)
fi

# --- build ---------------------------------------------------------------------
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$BUILD" -j "$(nproc)" --target bench_step
BENCH=$BUILD/bench/bench_step

# --- PyTorch with CUDA -----------------------------------------------------------
if [[ -z "${PYTHON:-}" ]]; then
  for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      PYTHON=$p
      break
    fi
  done
fi
PYTHON=${PYTHON:-}

# --- machine ---------------------------------------------------------------------
python3 - "$OUT/machine_gpu.json" \
  "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//' || true)" \
  "$(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || true)" \
  "$([[ -n $PYTHON ]] && "$PYTHON" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo none)" <<'EOF'
import json, os, sys, time
out, gpu, cpu, nvcc, torch = sys.argv[1:6]
json.dump(dict(gpu=gpu, cpu=cpu, cores=os.cpu_count(), nvcc=nvcc, torch=torch,
               date=time.strftime("%Y-%m-%d %H:%M:%S %Z")), open(out, "w"), indent=1)
EOF
cat "$OUT/machine_gpu.json"; echo

# --- run ---------------------------------------------------------------------------
status=0
echo "fedseg: $BENCH --device cuda --model $MODELS --batch $BATCH --steps $STEPS --warmup $WARMUP"
"$BENCH" --device cuda --model "$MODELS" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" \
  --json | tee "$OUT/fedseg_cuda.jsonl" || status=1
if grep -q '"skipped"' "$OUT/fedseg_cuda.jsonl"; then
  echo "run_gpu.sh: fedseg found no usable CUDA device (see the skipped line above)" >&2
  status=1
fi
echo "fedseg without CUDA graph: FS_NO_GRAPH=1 $BENCH --device cuda --model tiny"
FS_NO_GRAPH=1 "$BENCH" --device cuda --model tiny --batch "$BATCH" --steps "$STEPS" \
  --warmup "$WARMUP" --json | tee "$OUT/fedseg_cuda_nograph.jsonl" || status=1

: > "$OUT/torch_cuda.jsonl"
if [[ -n $PYTHON ]]; then
  echo "PyTorch ($PYTHON): torch_step.py --device cuda --model $MODELS --mode all"
  "$PYTHON" "$ROOT/bench/torch_step.py" --device cuda --model "$MODELS" --batch "$BATCH" \
    --steps "$STEPS" --warmup "$WARMUP" --mode all | tee "$OUT/torch_cuda.jsonl" || status=1
else
  echo "run_gpu.sh: no Python with a CUDA-enabled PyTorch found (set PYTHON); fedseg figures only" >&2
fi

echo
# compare_steps.py needs only the standard library: any python3 will do.
python3 "$ROOT/bench/compare_steps.py" --fedseg "$OUT/fedseg_cuda.jsonl" \
  --torch "$OUT/torch_cuda.jsonl" --targets gpu --machine "$OUT/machine_gpu.json" \
  --out "$OUT/gpu_results.json" || status=1
exit $status
