#!/bin/sh
# tests/test_fault_he.sh — faults during encrypted aggregation, with real
# processes: `fedseg aggregator --encrypted true` (3 rounds, round deadline
# 60 s, stage deadline 8 s, decryption threshold 2 of 3) and three
# `fedseg node` processes over mutual TLS on 127.0.0.1 (coarse synthetic
# data, 2 cases per site, 3 steps per round).
#   aggregator killed: site_3 leaves round 2 just before its upload
#     (secagg_drop_stage = upload), so the upload stage waits for the round
#     deadline; when site_1's and site_2's round-2 ciphertexts have been
#     accepted, the aggregator is SIGKILLed and restarted with the same
#     command on the same port. Round 2 starts a new attempt (a fresh key;
#     encrypted uploads are never journalled) with all three sites and
#     completes.
#   decryptor lost: site_1 is configured to leave round 3 just before its
#     partial decryptions (secagg_drop_stage = decrypt); it is in the first
#     decryption set {site_1, site_2}, so at the stage deadline another set
#     ({site_2, site_3}) decrypts: round 3 records 2 generations.
# Asserts: every process exits 0 by itself; rounds 1..3 have exactly one
# metrics line each, every round with 3 encrypted contributions; the nodes'
# final models are the aggregator's. About 40-70 s.
# shellcheck disable=SC2154 # p_site_* are assigned through eval
set -u
. "$(dirname "$0")/fedtest.sh"
fedtest_begin fault_he_work
"$F" synth --out data --sites 3 --cases-per-site 2,2,2 --voxel-scale 2 --quiet --threads 1 || exit 1
"$F" provision --consortium faults --aggregator 127.0.0.1 --sites site_1,site_2,site_3 --out cons >/dev/null || exit 1
M=cons/aggregator/state/metrics.jsonl

agg() { # agg LISTEN LOG: starts the aggregator in the background
    "$F" aggregator --config cons/aggregator/aggregator.conf --listen "$1" --port-file port \
        --rounds 3 --min-sites 2 --round-deadline-s 60 --join-wait-s 60 --steps-per-epoch 3 --linger-s 5 \
        --poll-ms 250 --device cpu --encrypted true --secagg-stage-s 8 >"$2" 2>&1 &
    apid=$!
}
agg 127.0.0.1:0 agg1.log
i=0
while [ ! -s port ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -s port ] || { echo "FAIL: the aggregator did not start"; cat agg1.log; kill $apid; exit 1; }
port=$(cat port)
for s in site_1 site_2 site_3; do
    extra=""
    [ $s = site_1 ] && extra="--set secagg_drop_stage=decrypt --set secagg_drop_round=3"
    [ $s = site_3 ] && extra="--set secagg_drop_stage=upload --set secagg_drop_round=2"
    # shellcheck disable=SC2086 # extra is a list of options
    "$F" node --config cons/sites/$s/node.conf --data data/$s --aggregator 127.0.0.1:$port --device cpu \
        --threads 1 --set batch=4 --set backoff_max_s=2 $extra >$s.log 2>&1 &
    eval "p_$s=\$!"
done
watchdog() { sh -c 'trap "kill \$s; exit 0" TERM; sleep 200 & s=$!; wait $s; kill -CONT "$@"; kill "$@"' dog "$@" \
    >/dev/null 2>&1 & dog=$!; }
watchdog $apid $p_site_1 $p_site_2 $p_site_3

i=0
until grep -q 'site site_1: encrypted update for round 2 accepted' agg1.log &&
    grep -q 'site site_2: encrypted update for round 2 accepted' agg1.log || [ $i -gt 1800 ]; do
    sleep 0.05; i=$((i + 1))
done
kill -KILL $apid
wait $apid 2>/dev/null
kill $dog 2>/dev/null
check "round 2 was open when the aggregator died (1 metrics line)" [ "$(wc -l <$M)" -eq 1 ]
check "site_1's and site_2's round-2 ciphertexts were accepted before the kill" sh -c \
    "grep -q 'site site_1: encrypted update for round 2 accepted' agg1.log && grep -q 'site site_2: encrypted update for round 2 accepted' agg1.log"
check "site_3 left round 2 before its upload" grep -q 'round 2: leaving encrypted aggregation before sending its encrypted update' site_3.log

rm -f port
agg 127.0.0.1:$port agg2.log
watchdog $apid $p_site_1 $p_site_2 $p_site_3
wait $p_site_1; r1=$?
wait $p_site_2; r2=$?
wait $p_site_3; r3=$?
wait $apid; ra=$?
kill $dog 2>/dev/null
check "site_1 exits 0 (got $r1)" [ $r1 -eq 0 ]
check "site_2 exits 0 (got $r2)" [ $r2 -eq 0 ]
check "site_3 exits 0 (got $r3)" [ $r3 -eq 0 ]
check "the restarted aggregator exits 0 (got $ra)" [ $ra -eq 0 ]
check "the restarted aggregator began round 2 with a new encrypted attempt" \
    grep -q 'round 2: encrypted aggregation attempt .* among 3 site(s)' agg2.log
check "three metrics lines" [ "$(wc -l <$M)" -eq 3 ]
for r in 1 2 3; do
    check "round $r has exactly one metrics line" [ "$(grep -c "^{\"round\":$r," $M)" -eq 1 ]
    check "round $r: 3 encrypted contributions" sh -c "grep '^{\"round\":$r,' $M | grep -q '\"contributed\":3,'"
done
check "site_1 left round 3 before decrypting" grep -q 'round 3: leaving encrypted aggregation before decrypting' site_1.log
check "round 3 was decrypted by a second set" sh -c "grep '^{\"round\":3,' $M | grep -q '\"decrypted_by\":2,\"generations\":2'"
check "the aggregator logged the new decryption set" grep -q 'round 3: a site of the decryption set did not answer' agg2.log
for s in site_1 site_2 site_3; do
    check "$s's final model is the aggregator's" cmp -s cons/sites/$s/state/final.ckpt cons/aggregator/state/global.ckpt
done
if [ $fail -ne 0 ]; then
    echo "--- metrics"; cat $M
    echo "--- agg1.log"; cat agg1.log; echo "--- agg2.log"; cat agg2.log
    for s in site_1 site_2 site_3; do echo "--- $s.log"; cat $s.log; done
fi
exit $fail
