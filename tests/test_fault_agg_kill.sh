#!/bin/sh
# tests/test_fault_agg_kill.sh — the aggregator SIGKILLed mid-round with real
# nodes. `fedseg aggregator` (3 rounds, round deadline 120 s) and three
# `fedseg node` processes over mutual TLS on 127.0.0.1 (coarse synthetic
# data, 2 cases per site, 3 steps per round). Once round 1 has closed, site_3
# is frozen (SIGSTOP: a slow site); when site_1's and site_2's round-2
# updates have been accepted, the aggregator is SIGKILLed, restarted with the
# same command on the same port, and site_3 is thawed (SIGCONT).
# Asserts: the restarted aggregator restores round 2's two accepted updates
# from its journal; the nodes reconnect by themselves (every process exits 0
# without help); rounds 1..3 each have exactly one metrics line; round 2
# counts site_1, site_2 and site_3 once each (3 reported, its samples the sum
# of the three sites' as in round 1); site_1 and site_2 did not train round 2
# twice; the nodes' final models are the aggregator's. About 20-40 s.
# shellcheck disable=SC2154 # p_site_* are assigned through eval
set -u
. "$(dirname "$0")/fedtest.sh"
fedtest_begin fault_agg_kill_work
"$F" synth --out data --sites 3 --cases-per-site 2,2,2 --voxel-scale 2 --quiet --threads 1 || exit 1
"$F" provision --consortium faults --aggregator 127.0.0.1 --sites site_1,site_2,site_3 --out cons >/dev/null || exit 1
M=cons/aggregator/state/metrics.jsonl

agg() { # agg LISTEN LOG: starts the aggregator in the background
    "$F" aggregator --config cons/aggregator/aggregator.conf --listen "$1" --port-file port \
        --rounds 3 --min-sites 2 --round-deadline-s 120 --join-wait-s 60 --steps-per-epoch 3 --linger-s 5 \
        --poll-ms 250 --device cpu >"$2" 2>&1 &
    apid=$!
}
agg 127.0.0.1:0 agg1.log
i=0
while [ ! -s port ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -s port ] || { echo "FAIL: the aggregator did not start"; cat agg1.log; kill $apid; exit 1; }
port=$(cat port)
for s in site_1 site_2 site_3; do
    "$F" node --config cons/sites/$s/node.conf --data data/$s --aggregator 127.0.0.1:$port --device cpu \
        --threads 1 --set batch=4 --set backoff_max_s=2 >$s.log 2>&1 &
    eval "p_$s=\$!"
done
watchdog() { sh -c 'trap "kill \$s; exit 0" TERM; sleep 150 & s=$!; wait $s; kill -CONT "$@"; kill "$@"' dog "$@" \
    >/dev/null 2>&1 & dog=$!; }
watchdog $apid $p_site_1 $p_site_2 $p_site_3

i=0
while ! grep -q '^{"round":1,' $M 2>/dev/null && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done
kill -STOP $p_site_3
i=0
until grep -q 'site site_1: update for round 2 accepted' agg1.log && grep -q 'site site_2: update for round 2 accepted' agg1.log \
    || [ $i -gt 1200 ]; do sleep 0.05; i=$((i + 1)); done
kill -KILL $apid
wait $apid 2>/dev/null
kill $dog 2>/dev/null
check "round 2 was open when the aggregator died (1 metrics line)" [ "$(wc -l <$M)" -eq 1 ]
check "site_1's and site_2's round-2 updates were accepted before the kill" sh -c \
    "grep -q 'site site_1: update for round 2 accepted' agg1.log && grep -q 'site site_2: update for round 2 accepted' agg1.log"
check "site_3's round-2 update was not" sh -c "! grep -q 'site site_3: update for round 2 accepted' agg1.log"

rm -f port
agg 127.0.0.1:$port agg2.log
watchdog $apid $p_site_1 $p_site_2 $p_site_3
kill -CONT $p_site_3
wait $p_site_1; r1=$?
wait $p_site_2; r2=$?
wait $p_site_3; r3=$?
wait $apid; ra=$?
kill $dog 2>/dev/null
check "site_1 exits 0 (got $r1)" [ $r1 -eq 0 ]
check "site_2 exits 0 (got $r2)" [ $r2 -eq 0 ]
check "site_3 exits 0 (got $r3)" [ $r3 -eq 0 ]
check "the restarted aggregator exits 0 (got $ra)" [ $ra -eq 0 ]
check "the restarted aggregator listened on the same port" grep -q "^aggregator listening on 127.0.0.1:$port, round 2/3" agg2.log
check "it restored round 2's two accepted updates" grep -q 'round 2: 2 accepted update(s) restored from the journal' agg2.log
check "three metrics lines" [ "$(wc -l <$M)" -eq 3 ]
for r in 1 2 3; do
    check "round $r has exactly one metrics line" [ "$(grep -c "^{\"round\":$r," $M)" -eq 1 ]
    for s in site_1 site_2 site_3; do
        n=$(grep "^{\"round\":$r," $M | sed 's/"missing".*//' | grep -o "\"site\":\"$s\"" | wc -l)
        check "round $r: $s counted exactly once ($n)" [ "$n" -eq 1 ]
    done
done
samples() { grep "^{\"round\":$1," $M | sed 's/.*"sites_reported":\([0-9]*\),"num_samples":\([0-9]*\).*/\1 \2/'; }
check "round 2: 3 reported with round 1's total samples ($(samples 1) / $(samples 2))" [ "$(samples 2)" = "$(samples 1)" ]
for s in site_1 site_2; do
    check "$s trained round 2 once" [ "$(grep -c '^round 2 ' $s.log)" -eq 1 ]
done
check "site_3 reconnected and sent round 2" grep -q '^round 2 ' site_3.log
for s in site_1 site_2 site_3; do
    check "$s's final model is the aggregator's" cmp -s cons/sites/$s/state/final.ckpt cons/aggregator/state/global.ckpt
done
if [ $fail -ne 0 ]; then
    echo "--- metrics"; cat $M
    echo "--- agg1.log"; cat agg1.log; echo "--- agg2.log"; cat agg2.log
    for s in site_1 site_2 site_3; do echo "--- $s.log"; cat $s.log; done
fi
exit $fail
