#!/bin/sh
# scripts/build.sh — configures and builds fedseg into ${BUILD:-build}
# (Release). The configure step prints which backends are built.
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$BUILD" -j"$(nproc)"
