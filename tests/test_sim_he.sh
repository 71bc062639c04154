#!/bin/sh
# tests/test_sim_he.sh — `fedseg sim --encrypted` end to end: 4 synthesized
# sites (coarse voxels, 3 cases each), 2 rounds of 1 local epoch of 3 steps
# on the CPU, round deadline 20 s; decryption threshold 3 of 4.
#   run 1: --drop 1 --drop-stage upload: exit 0; round 1 has 4 encrypted
#          contributions decrypted by 3 sites, round 2 only 3 contributions
#          (the fourth site left before its upload) and still completes; the
#          aggregator never accepted a plain update; final.ckpt evaluates
#   run 2: --drop 2 --drop-stage upload: round 2's first attempt is abandoned
#          (fewer contributors than the threshold; logged, model unchanged)
#          and a second attempt completes the round
#   run 5: --drop 1 --drop-stage decrypt: site_1, in the first decryption
#          set, leaves round 2 before decrypting; another set decrypts
#          (round 2: 2 generations)
#   run 3: --dp-clip 0.05 --dp-epsilon 8: distributed DP under encryption
#          (dp = distributed, threshold 3), epsilon per round increasing and
#          within 8, every site adding its discrete-Gaussian noise share
# Then bad usage: --encrypted with --secure-agg, --encrypted with 1 site.
# About 150 s.
set -u
. "$(dirname "$0")/fedtest.sh"
fedtest_begin sim_he_work
common="--sites 4 --rounds 2 --local-epochs 1 --steps 3 --batch 4 --cases-per-site 3,3,3,3 --voxel-scale 2 --device cpu --deadline 20 --encrypted --he-threshold 3"
timeout 300 "$F" sim $common --drop 1 --drop-stage upload --out run1 >out1.txt 2>err1.txt
rc=$?
check "sim --encrypted --drop 1 exits 0 (got $rc)" [ $rc -eq 0 ]
check "the encrypted-aggregation line is printed" grep -q '^encrypted aggregation: the aggregator sees only ciphertexts' out1.txt
check "metrics.jsonl: 2 lines" [ "$(wc -l <run1/metrics.jsonl)" -eq 2 ]
check "round 1: 4 contributions, decrypted by 3" sh -c "grep '^{\"round\":1,' run1/metrics.jsonl | grep -q '\"contributed\":4,\"decrypted_by\":3'"
check "round 2: 3 contributions, recovered" sh -c "grep '^{\"round\":2,' run1/metrics.jsonl | grep -q '\"contributed\":3,\"decrypted_by\":3'"
check "site_4 left round 2 before its upload" grep -q 'round 2: leaving encrypted aggregation before sending its encrypted update' run1/logs/site_4.log
check "the aggregator saw only encrypted updates" sh -c "! grep -q ': update for round .* accepted' run1/logs/aggregator.log && grep -q 'encrypted update for round 2 accepted' run1/logs/aggregator.log"
check "a site took part in decryption" grep -q 'took part in decryption' run1/logs/site_1.log
check "final.ckpt evaluates" "$F" eval --model run1/final.ckpt --data run1/data/site_1 --split val

timeout 300 "$F" sim $common --drop 2 --drop-stage upload --out run2 >out2.txt 2>err2.txt
rc=$?
check "sim --encrypted --drop 2 exits 0 (got $rc)" [ $rc -eq 0 ]
check "round 2's first attempt was abandoned" grep -q 'round 2: encrypted aggregation attempt .* abandoned: .*; the global model is unchanged' run2/logs/aggregator.log
check "round 2 completed with a second attempt" sh -c "grep '^{\"round\":2,' run2/metrics.jsonl | grep -q '\"contributed\":4'"

timeout 300 "$F" sim $common --drop 1 --drop-stage decrypt --out run5 >out5.txt 2>err5.txt
rc=$?
check "sim --encrypted --drop 1 --drop-stage decrypt exits 0 (got $rc)" [ $rc -eq 0 ]
check "site_1 left round 2 before decrypting" grep -q 'round 2: leaving encrypted aggregation before decrypting' run5/logs/site_1.log
check "round 2: decrypted by a second set" sh -c "grep '^{\"round\":2,' run5/metrics.jsonl | grep -q '\"contributed\":4,\"decrypted_by\":3,\"generations\":2'"

timeout 300 "$F" sim $common --dp-clip 0.05 --dp-epsilon 8 --out run4 >out4.txt 2>err4.txt
rc=$?
check "sim --encrypted --dp-epsilon 8 exits 0 (got $rc)" [ $rc -eq 0 ]
check "the aggregator runs dp = distributed with a threshold" sh -c "grep -q '^dp = distributed' run4/config/aggregator.conf && grep -q '^he_threshold = 3' run4/config/aggregator.conf"
eps=$(grep -o '"dp":{[^}]*}' run4/metrics.jsonl | sed 's/.*"epsilon":\([0-9.eE+-]*\).*/\1/')
check "epsilon per round, increasing, within 8 ($(echo $eps | tr '\n' ' '))" awk -v l="$(echo $eps)" 'BEGIN{n=split(l,e," "); if (n!=2) exit 1; if (e[2]<=e[1] || e[2]>8 || e[1]<=0) exit 1}'
for s in site_1 site_4; do
    check "$s added its noise share each round" sh -c "[ \$(grep -c 'noise share added (discrete Gaussian' run4/logs/$s.log) -eq 2 ]"
done

"$F" sim --encrypted --secure-agg >/dev/null 2>&1; rc=$?
check "--encrypted with --secure-agg is bad usage (got $rc)" [ $rc -eq 2 ]
timeout 120 "$F" sim --sites 1 --rounds 1 --encrypted --cases-per-site 3 --voxel-scale 2 --device cpu --out run3 >/dev/null 2>err3.txt; rc=$?
check "--encrypted with 1 site is refused (got $rc)" sh -c "[ $rc -eq 1 ] && grep -q 'needs 2 or more sites' err3.txt"
if [ $fail -ne 0 ]; then
    for f in out1.txt err1.txt run1/logs/aggregator.log run1/logs/site_1.log out2.txt run2/logs/aggregator.log; do echo "--- $f"; cat $f; done
fi
exit $fail
