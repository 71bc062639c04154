#!/bin/sh
# tests/test_sim.sh — `fedseg sim` end to end: 2 synthesized sites (coarse
# voxels, 3 cases each), 3 rounds of 1 local epoch of 3 steps, all on the CPU.
# Asserts: exit 0; the live table has a row per round and a final row; the
# run folder holds metrics.jsonl (one line per round, rounds 1..3, both sites
# in each), final.ckpt (byte for byte the aggregator's last global model and
# each node's final model), dice.png (a PNG drawn by gnuplot; skipped when
# gnuplot is missing), dice.dat (rounds 0..3), the configs, the consortium
# and a log per process; the summary line; and that no process it started is
# left. Then a second run on the first run's data (--data) and bad usage.
# About 20 s.
set -u
. "$(dirname "$0")/fedtest.sh"
fedtest_begin sim_work
timeout 300 "$F" sim --sites 2 --rounds 3 --local-epochs 1 --steps 3 --batch 4 --cases-per-site 3,3 \
    --voxel-scale 2 --device cpu --out run1 >out1.txt 2>err1.txt
rc=$?
check "fedseg sim exits 0 (got $rc)" [ $rc -eq 0 ]
R=run1
check "a table row per round" sh -c "grep -Eq '^ +1 +2/2 \|' out1.txt && grep -Eq '^ +2 +2/2 \|' out1.txt && grep -Eq '^ +3 +2/2 \|' out1.txt"
check "a final row" grep -Eq '^final +\| +0\.[0-9]{3} +0\.[0-9]{3}' out1.txt
check "the summary line" grep -q '^sim finished: 3 rounds of 2 site(s) in .* Dice WT site_1 0\.[0-9]* site_2 0\.[0-9]* (mean' out1.txt
check "metrics.jsonl: 3 lines" [ "$(wc -l <$R/metrics.jsonl)" -eq 3 ]
for r in 1 2 3; do
    line=$(grep "^{\"round\":$r," $R/metrics.jsonl)
    n1=$(echo "$line" | grep -o '"site":"site_1"' | wc -l)
    n2=$(echo "$line" | grep -o '"site":"site_2"' | wc -l)
    check "round $r: each site reported once" sh -c "[ $n1 -eq 1 ] && [ $n2 -eq 1 ]"
done
check "final.ckpt is the aggregator's last global model" cmp -s $R/final.ckpt $R/state/aggregator/global.ckpt
for s in site_1 site_2; do
    check "$s's final model is final.ckpt" cmp -s $R/final.ckpt $R/state/$s/final.ckpt
    check "$s has its config, kit and log" sh -c "[ -s $R/config/$s.conf ] && [ -s $R/consortium/sites/$s/$s.crt ] && [ -s $R/logs/$s.log ]"
done
check "the aggregator's config and log" sh -c "[ -s $R/config/aggregator.conf ] && grep -q 'aggregator listening on 127.0.0.1:' $R/logs/aggregator.log"
check "dice.dat: rounds 0..3" sh -c "[ \$(grep -vc '^#' $R/dice.dat) -eq 4 ]"
if command -v gnuplot >/dev/null 2>&1; then
    check "dice.png is a PNG" sh -c "head -c 8 $R/dice.png | od -An -tx1 | tr -d ' \n' | grep -q '^89504e470d0a1a0a'"
else
    echo "skip: gnuplot is not installed (no dice.png expected)"
fi
check "final.ckpt evaluates" "$F" eval --model $R/final.ckpt --data $R/data/site_1 --split val
# every process the run started has ended
for pid in $(sed -n 's/^started .* (pid \([0-9]*\)).*/\1/p' out1.txt); do
    check "process $pid has ended" sh -c "! kill -0 $pid 2>/dev/null"
done
check "three children were listed" [ "$(grep -c '^started .* (pid ' out1.txt)" -eq 3 ]

# the same data again, one round, from --data
timeout 300 "$F" sim --data $R/data --rounds 1 --local-epochs 1 --steps 2 --batch 4 --device cpu --out run2 \
    >out2.txt 2>err2.txt
rc=$?
check "--data run exits 0 (got $rc)" [ $rc -eq 0 ]
check "--data run found both sites" grep -q 'fedseg sim: 2 site(s) (site_1, site_2)' out2.txt
check "--data run did not synthesize" [ ! -e run2/data ]

# bad usage and a used run folder
"$F" sim --rounds 0 >/dev/null 2>&1; rc=$?
check "--rounds 0 is bad usage (got $rc)" [ $rc -eq 2 ]
"$F" sim --data $R/data --voxel-scale 2 >/dev/null 2>&1; rc=$?
check "--voxel-scale with --data is bad usage (got $rc)" [ $rc -eq 2 ]
"$F" sim --data $R/data --rounds 1 --out run1 >/dev/null 2>err3.txt; rc=$?
check "a non-empty run folder is refused (got $rc)" sh -c "[ $rc -eq 1 ] && grep -q 'not empty' err3.txt"
check "--help" sh -c "'$F' sim --help | grep -q 'usage: fedseg sim'"
if [ $fail -ne 0 ]; then
    for f in out1.txt err1.txt out2.txt err2.txt; do echo "--- $f"; cat $f; done
    echo "--- aggregator.log"; cat $R/logs/aggregator.log
fi
exit $fail
