#!/bin/sh
# scripts/test.sh — the whole test suite: installs what is missing, builds,
# runs every test with ctest. GPU tests report SKIP without a CUDA device.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
sh scripts/build.sh
cd "${BUILD:-build}"
ctest --output-on-failure -j"$(nproc)" --timeout 1500
