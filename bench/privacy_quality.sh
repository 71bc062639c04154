#!/bin/sh
# bench/privacy_quality.sh — what the private modes cost in Dice: the default
# federation (3 sites, 15 rounds x 2 local epochs, `tiny`, CPU) on the same
# synthesized data, in plain, secure (--secure-agg) and encrypted
# (--encrypted) mode, for several training seeds; each run is scored like
# docs/results.md (`fedseg eval --split val`, mean of the 10 held-out
# patients). One result line per run (and results.tsv in OUT):
#   mode seed mean_wt mean_tc mean_et wall_s
# and, per mode, the mean and spread over the seeds.
# Usage: sh bench/privacy_quality.sh [BUILD_DIR] [OUT_DIR] ["SEEDS"] ["MODES"]
#   defaults: build  run/privacy_quality  "1 2 3"  "plain secure encrypted"
# About 10-14 minutes per run on 2 cores.
set -eu
B=${1:-build}
OUT=${2:-run/privacy_quality}
SEEDS=${3:-1 2 3}
MODES=${4:-plain secure encrypted}
F=$B/fedseg
[ -x "$F" ] || { echo "privacy_quality: $F not found (build first: sh scripts/build.sh)" >&2; exit 2; }
mkdir -p "$OUT"
[ -d "$OUT/data/site_3" ] || "$F" synth --out "$OUT/data" >"$OUT/synth.log" 2>&1
[ -f "$OUT/results.tsv" ] || printf 'mode\tseed\tmean_wt\tmean_tc\tmean_et\twall_s\n' >"$OUT/results.tsv"
for seed in $SEEDS; do
    for mode in $MODES; do
        case $mode in
        plain) flag= ;;
        secure) flag=--secure-agg ;;
        encrypted) flag=--encrypted ;;
        *) echo "privacy_quality: unknown mode $mode" >&2; exit 2 ;;
        esac
        run=$OUT/$mode-seed$seed
        if grep -q "^$mode	$seed	" "$OUT/results.tsv"; then continue; fi
        rm -rf "$run"
        t0=$(date +%s)
        "$F" sim --data "$OUT/data" --rounds 15 --local-epochs 2 --device cpu --seed "$seed" $flag \
            --out "$run" >"$run.out" 2>"$run.err"
        t1=$(date +%s)
        for s in 1 2 3; do
            "$F" eval --model "$run/final.ckpt" --data "$OUT/data/site_$s" --split val --json >"$run.eval$s.json"
        done
        line=$(python3 - "$run" <<'PY'
import json, sys
cases = []
for s in (1, 2, 3):
    cases += json.load(open(f"{sys.argv[1]}.eval{s}.json"))["cases"]
m = [sum(c[k] for c in cases) / len(cases) for k in ("wt", "tc", "et")]
print("%.4f\t%.4f\t%.4f" % tuple(m))
PY
)
        printf '%s\t%s\t%s\t%s\n' "$mode" "$seed" "$line" "$((t1 - t0))" | tee -a "$OUT/results.tsv"
    done
done
python3 - "$OUT/results.tsv" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
for mode in dict.fromkeys(r[0] for r in rows):
    wt = [float(r[2]) for r in rows if r[0] == mode]
    sd = st.stdev(wt) if len(wt) > 1 else float("nan")
    print(f"{mode}: mean WT {st.mean(wt):.4f} over {len(wt)} seed(s) (sd {sd:.4f}, min {min(wt):.4f}, max {max(wt):.4f})")
PY
