#!/bin/sh
# scripts/gpu_check.sh — every GPU check in one run, for a machine with an
# NVIDIA GPU (H100/H200, CUDA 13): builds with the CUDA backend, runs the GPU
# tests (every CUDA op against the CPU reference, the whole U-Net on CUDA vs
# CPU with the CUDA-graph step, the aggregator's GPU fold and arithmetic ops,
# the homomorphic-encryption kernels bit for bit against the CPU, and the
# encrypted-aggregation protocol with the sites' whole-update encryption and
# the server's ciphertext sum on the GPU: test_he_proto) and then the
# training-step benchmark side by side with PyTorch (bench/run_gpu.sh), the
# aggregator-ops benchmark (bench/run_aggops.sh) and the encrypted-aggregation
# benchmark with GPU encryption and the GPU ciphertext sum (bench/bench_he.c,
# `ref`-sized update, 10 sites), then secure and encrypted federation rounds
# against plain ones with the aggregator's sums on the GPU.
# Results and logs go to ${OUT:-gpu-results}/.
#
# Where the machine lacks Debian's -dev packages, carry them as described in
# docs/benchmarks.md and source their unpack script before running this.
set -eu
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release > "$OUT/configure.log" 2>&1
grep "fedseg backends" "$OUT/configure.log" | tee "$OUT/backends.txt"
cmake --build "$BUILD" -j"$(nproc)" > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
rc=0
(cd "$BUILD" && ctest --output-on-failure -R "test_cuda_parity|test_unet_cuda|test_agg_fold|test_aggops|test_unet$|test_kernels_fd|test_he_cuda|test_he$|test_he_proto") \
  > "$OUT/gpu_tests.log" 2>&1 || rc=1
tail -15 "$OUT/gpu_tests.log"
BUILD="$BUILD" OUT="$OUT" bash bench/run_gpu.sh > "$OUT/bench_gpu.log" 2>&1 || rc=1
tail -25 "$OUT/bench_gpu.log"
BUILD="$BUILD" OUT="$OUT/aggops" DEVICE=cuda bash bench/run_aggops.sh > "$OUT/bench_aggops.log" 2>&1 || rc=1
tail -20 "$OUT/bench_aggops.log"
"$BUILD/bench/bench_he" --device cuda --json > "$OUT/bench_he_gpu.log" 2>&1 || rc=1
tail -10 "$OUT/bench_he_gpu.log"
# The federation rounds with the aggregator's sums on the GPU (its `device`
# is auto): secure against plain (10 sites on their own cores here) and
# encrypted against plain; each capped so the whole check stays short.
FLOWER=0 DEADLINE=20 BUILD="$BUILD" OUT="$OUT/secagg" timeout 240 bash bench/run_secagg.sh \
  > "$OUT/bench_secagg.log" 2>&1 || rc=1
tail -8 "$OUT/bench_secagg.log"
ROUNDS=2 DEADLINE=30 BUILD="$BUILD" OUT="$OUT/he_fed" timeout 240 bash bench/run_he_fed.sh \
  > "$OUT/bench_he_fed.log" 2>&1 || rc=1
tail -8 "$OUT/bench_he_fed.log"
exit $rc
