#!/bin/sh
# tests/test_noniid_sim.sh — `fedseg sim` end to end with non-default
# algorithms: 2 synthesized sites (coarse voxels, 3 cases each), 2 rounds of
# 1 local epoch of 3 steps, tiny, CPU.
#   scaffold  exit 0; 2 metrics lines with both sites; each update carried
#             2·P values (bytes_received ≥ 2 × 487,388 × 4: the control
#             variates travel with the update); the aggregator kept its
#             control variate in server.r2.state; personalised fine-tuning
#             (--finetune-epochs 1) wrote personal.ckpt at each site and
#             printed its Dice
#   fedadam   with FedBN-free median aggregation: exit 0, server.r2.state
#             holds the moments, final.ckpt is the aggregator's model
#   refusals  aggregation = median with secure_agg = true (and with
#             encrypted = true) is refused with the reason; an unknown
#             algorithm is refused
# About 40 s.
set -u
. "$(dirname "$0")/fedtest.sh"
fedtest_begin noniid_sim_work
COMMON="--sites 2 --rounds 2 --local-epochs 1 --steps 3 --batch 4 --cases-per-site 3,3 --voxel-scale 2 --device cpu"
timeout 300 "$F" sim $COMMON --algorithm scaffold --finetune-epochs 1 --out run1 >out1.txt 2>err1.txt
rc=$?
check "scaffold sim exits 0 (got $rc)" [ $rc -eq 0 ]
R=run1
check "scaffold: metrics.jsonl has 2 lines" [ "$(wc -l <$R/metrics.jsonl 2>/dev/null)" = 2 ]
# bytes_received counts the encoded messages: 2P·4 = 3,898,208 payload bytes
# plus framing (P·4 = 1,949,104 would be a plain update)
for r in 1 2; do
    n=$(grep "^{\"round\":$r," $R/metrics.jsonl | grep -o '"bytes_received":[0-9]*' | cut -d: -f2 |
        awk '$1 >= 3898208 && $1 < 3960000' | wc -l)
    check "scaffold round $r: both updates carried 2P values (3,898,208 bytes + framing)" [ "$n" -eq 2 ]
done
check "scaffold: the aggregator's control variate is saved" [ -s $R/state/aggregator/server.r2.state ]
check "scaffold: final.ckpt is the aggregator's model" cmp -s $R/final.ckpt $R/state/aggregator/global.ckpt
for s in site_1 site_2; do
    check "$s: personal.ckpt written" [ -s $R/state/$s/personal.ckpt ]
    check "$s: personalised Dice printed" grep -q '^personalised model (1 local epochs' $R/logs/$s.log
    check "$s: personal.ckpt evaluates" "$F" eval --model $R/state/$s/personal.ckpt --data $R/data/$s --split val
done

timeout 300 "$F" sim $COMMON --algorithm fedadam --server-lr 0.01 --aggregation median --out run2 >out2.txt 2>err2.txt
rc=$?
check "fedadam + median sim exits 0 (got $rc)" [ $rc -eq 0 ]
check "fedadam: moments saved after round 2" [ -s run2/state/aggregator/server.r2.state ]
check "fedadam: the state of round 1 was removed" [ ! -e run2/state/aggregator/server.r1.state ]
check "fedadam: algorithm logged" grep -q 'algorithm fedadam: server optimiser fedadam (server_lr 0.01), aggregation median' run2/logs/aggregator.log
check "fedadam: final.ckpt is the aggregator's model" cmp -s run2/final.ckpt run2/state/aggregator/global.ckpt

AGG="--sites a,b --ca ca.crt --cert a.crt --key a.key --state-dir st"
"$F" aggregator $AGG --aggregation median --secure-agg true >o3.txt 2>e3.txt; rc=$?
check "median + secure_agg refused (rc $rc)" sh -c "[ $rc -eq 1 ] && grep -q 'cannot be combined with secure_agg = true' e3.txt"
"$F" aggregator $AGG --aggregation trimmed_mean --encrypted yes >o4.txt 2>e4.txt; rc=$?
check "trimmed_mean + encrypted refused (rc $rc)" sh -c "[ $rc -eq 1 ] && grep -q 'encrypted = true' e4.txt"
"$F" aggregator $AGG --algorithm fedsgd >o5.txt 2>e5.txt; rc=$?
check "unknown algorithm refused (rc $rc)" sh -c "[ $rc -eq 1 ] && grep -q 'algorithm = fedsgd' e5.txt"
check "nothing was started by a refused aggregator" [ ! -e st ]
if [ $fail -ne 0 ]; then
    for f in out1.txt err1.txt out2.txt err2.txt e3.txt e4.txt e5.txt; do echo "--- $f"; cat $f; done
    for l in run1/logs/*.log run2/logs/*.log; do echo "--- $l"; tail -20 $l; done
fi
exit $fail
