#!/bin/sh
# scripts/demo.sh — the default job: installs what is missing, builds,
# synthesizes the default 3-site federation, trains the `tiny` U-Net on the
# pooled sites on the CPU (or the GPU when present), and prints the held-out
# Dice per site (about 10 minutes on 2 CPU cores; EPOCHS=N to change).
# Everything lands in ${RUN:-run/demo}.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
sh scripts/build.sh
FEDSEG=${BUILD:-build}/fedseg
RUN=${RUN:-run/demo}
mkdir -p "$RUN"
if [ ! -f "$RUN/data/federation.json" ]; then
  "$FEDSEG" synth --out "$RUN/data"
fi
SITES=$(ls -d "$RUN"/data/site_* | tr '\n' ',' | sed 's/,$//')
"$FEDSEG" train --data "$SITES" --model tiny --epochs "${EPOCHS:-40}" --out "$RUN/tiny.ckpt" \
  --metrics "$RUN/metrics.jsonl"
for s in "$RUN"/data/site_*; do
  echo "== held-out cases of $(basename "$s")"
  "$FEDSEG" eval --model "$RUN/tiny.ckpt" --data "$s" --split val
done
