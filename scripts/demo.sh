#!/bin/sh
# scripts/demo.sh — the main job: installs what is missing, builds, and runs
# `fedseg sim`: a whole federation on this machine — the default synthetic
# 3-site federation, a fresh consortium, an aggregator and three site nodes
# over mutual TLS on 127.0.0.1, FedAvg rounds of the `tiny` U-Net (on the
# GPU when there is one, else the CPU), a live table per round, and in the
# run folder the metrics, the final model and a plot of Dice per round per
# site (13.6 minutes measured on 2 CPU cores shared with other jobs; see
# docs/results.md for the Dice it reaches against centralised training).
# ROUNDS, LOCAL_EPOCHS change the schedule; SIM_ARGS adds any `fedseg sim`
# option (e.g. SIM_ARGS="--out run/my-sim"); by default the run folder is
# run/sim-YYYYmmdd-HHMMSS.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
sh scripts/build.sh
FEDSEG=${BUILD:-build}/fedseg
# shellcheck disable=SC2086 # SIM_ARGS is a list of options
exec "$FEDSEG" sim --sites 3 --model tiny --rounds "${ROUNDS:-15}" --local-epochs "${LOCAL_EPOCHS:-2}" ${SIM_ARGS:-}
