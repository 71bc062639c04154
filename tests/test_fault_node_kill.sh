#!/bin/sh
# tests/test_fault_node_kill.sh — a site SIGKILLed mid-round. `fedseg
# aggregator` (min_sites 2, round deadline 15 s, 3 rounds) with three real
# `fedseg node` processes over mutual TLS on 127.0.0.1 (coarse synthetic
# data, 2 cases per site, 3 steps per round; site_3 trains with a larger batch
# so that it is still training when the others have reported). As soon as
# site_3 has downloaded the round-1 model it is SIGKILLed.
# Asserts: round 1 closes at its deadline (closed_by "deadline", at least
# 15 s after it opened) with site_1 and site_2 and names site_3 as missing;
# site_3, restarted with the same command once round 1 has closed, joins
# again and reports in a later round; rounds 1..3 each have exactly one
# metrics line, no site twice in a round; every process exits 0 by itself
# and the nodes' final models are the aggregator's. About 30-40 s.
set -u
. "$(dirname "$0")/fedtest.sh"
fedtest_begin fault_node_kill_work
"$F" synth --out data --sites 3 --cases-per-site 2,2,2 --voxel-scale 2 --quiet --threads 1 || exit 1
"$F" provision --consortium faults --aggregator 127.0.0.1 --sites site_1,site_2,site_3 --out cons >/dev/null || exit 1
M=cons/aggregator/state/metrics.jsonl

"$F" aggregator --config cons/aggregator/aggregator.conf --listen 127.0.0.1:0 --port-file port \
    --rounds 3 --min-sites 2 --round-deadline-s 15 --join-wait-s 60 --steps-per-epoch 3 --linger-s 5 \
    --poll-ms 250 --device cpu >agg.log 2>&1 &
apid=$!
i=0
while [ ! -s port ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -s port ] || { echo "FAIL: the aggregator did not start"; cat agg.log; kill $apid; exit 1; }
port=$(cat port)
node() { # node SITE BATCH: starts the site's node in the background, appending to SITE.log
    "$F" node --config cons/sites/$1/node.conf --data data/$1 --aggregator 127.0.0.1:$port --device cpu \
        --threads 1 --set batch=$2 --set backoff_max_s=2 >>$1.log 2>&1 &
}
node site_1 4; p1=$!
node site_2 4; p2=$!
node site_3 32; p3=$!
sh -c 'trap "kill \$s; exit 0" TERM; sleep 150 & s=$!; wait $s; kill "$@"' dog $apid $p1 $p2 $p3 >/dev/null 2>&1 &
dog=$!

# site_3 has the round-1 model (its node saves it before training): kill it
i=0
while [ ! -s cons/sites/site_3/state/global.ckpt ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done
kill -STOP $p3
accepted=$(grep -c 'site site_3: update for round 1 accepted' agg.log)
kill -KILL $p3
wait $p3 2>/dev/null
check "site_3 was killed before its round-1 update arrived" [ "$accepted" -eq 0 ]

# round 1 closes at the deadline with the other two
i=0
while ! grep -q '^{"round":1,' $M 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
l1=$(grep '^{"round":1,' $M)
case $l1 in *'"closed_by":"deadline"'*) r=0 ;; *) r=1 ;; esac
check "round 1 closed by its deadline" [ $r -eq 0 ]
case $l1 in *'"sites_reported":2,'*'"site":"site_1"'*'"missing":[{"site":"site_3"'*) r=0 ;; *) r=1 ;; esac
check "round 1: 2 sites reported, site_3 missing" [ $r -eq 0 ]
case $l1 in *'"site":"site_2"'*) r=0 ;; *) r=1 ;; esac
check "round 1: site_2 reported" [ $r -eq 0 ]
w=$(echo "$l1" | sed 's/.*"wall_seconds":\([0-9.]*\).*/\1/')
check "round 1 lasted at least the 15 s deadline (${w} s)" awk "BEGIN{exit !($w >= 14.9)}"

# site_3 comes back with the same command
node site_3 32; p3=$!
wait $p1; r1=$?
wait $p2; r2=$?
wait $p3; r3=$?
wait $apid; ra=$?
kill $dog 2>/dev/null
check "site_1 exits 0 (got $r1)" [ $r1 -eq 0 ]
check "site_2 exits 0 (got $r2)" [ $r2 -eq 0 ]
check "the restarted site_3 exits 0 (got $r3)" [ $r3 -eq 0 ]
check "the aggregator exits 0 (got $ra)" [ $ra -eq 0 ]
check "site_3 joined twice (its log)" [ "$(grep -c "joined the federation at 127.0.0.1:$port as 'site_3'" site_3.log)" -eq 2 ]
check "three metrics lines" [ "$(wc -l <$M)" -eq 3 ]
for r in 1 2 3; do
    check "round $r has exactly one metrics line" [ "$(grep -c "^{\"round\":$r," $M)" -eq 1 ]
    for s in site_1 site_2 site_3; do
        n=$(grep "^{\"round\":$r," $M | sed 's/"missing".*//' | grep -o "\"site\":\"$s\"" | wc -l)
        check "round $r: $s counted at most once ($n)" [ "$n" -le 1 ]
    done
done
later=$(grep -E '^\{"round":[23],' $M | sed 's/"missing".*//' | grep -c '"site":"site_3"')
check "site_3 reported in a later round ($later of rounds 2-3)" [ "$later" -ge 1 ]
for s in site_1 site_2 site_3; do
    check "$s's final model is the aggregator's" cmp -s cons/sites/$s/state/final.ckpt cons/aggregator/state/global.ckpt
done
if [ $fail -ne 0 ]; then
    echo "--- metrics"; cat $M
    echo "--- agg.log"; cat agg.log
    for s in site_1 site_2 site_3; do echo "--- $s.log"; cat $s.log; done
fi
exit $fail
