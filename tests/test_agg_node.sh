#!/bin/sh
# tests/test_agg_node.sh — `fedseg aggregator` with two real `fedseg node`
# processes over mutual TLS on 127.0.0.1: synthetic data for two sites
# (coarse voxels, 3 cases each), a fresh consortium, 2 rounds of 3 local steps.
# Asserts: every process exits 0 by itself (the aggregator after linger_s),
# the aggregator printed its listening line and one line per closed round,
# metrics.jsonl has one line per round naming both sites with their loss,
# Dice, bytes and seconds, and each site's final model is byte for byte the
# aggregator's last global checkpoint. About 10 s.
set -u
. "$(dirname "$0")/fedtest.sh"
fedtest_begin agg_node_work
"$F" synth --out data --sites 2 --cases-per-site 3,3 --voxel-scale 2 --quiet --threads 1 || exit 1
"$F" provision --consortium nodetest --aggregator 127.0.0.1 --sites site_1,site_2 --out cons >/dev/null || exit 1

"$F" aggregator --config cons/aggregator/aggregator.conf --listen 127.0.0.1:0 --port-file port \
    --rounds 2 --steps-per-epoch 3 --join-wait-s 0 --linger-s 3 --round-deadline-s 120 \
    --device cpu >agg.log 2>&1 &
apid=$!
i=0
while [ ! -s port ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -s port ] || { echo "FAIL: the aggregator did not start"; cat agg.log; kill $apid; exit 1; }
port=$(cat port)
for s in site_1 site_2; do
    "$F" node --config cons/sites/$s/node.conf --data data/$s --aggregator 127.0.0.1:$port \
        --device cpu --threads 1 --set batch=4 >$s.log 2>&1 &
    eval "pid_$s=\$!"
done
# everything must end by itself; a watchdog kills leftovers after 120 s
sh -c 'trap "kill \$s; exit 0" TERM; sleep 120 & s=$!; wait $s; kill "$@"' dog $apid $pid_site_1 $pid_site_2 \
    >/dev/null 2>&1 &
dog=$!
wait $pid_site_1; r1=$?
wait $pid_site_2; r2=$?
wait $apid; ra=$?
kill $dog 2>/dev/null
check "site_1 exits 0 (got $r1)" [ $r1 -eq 0 ]
check "site_2 exits 0 (got $r2)" [ $r2 -eq 0 ]
check "the aggregator exits 0 after the last round and linger_s (got $ra)" [ $ra -eq 0 ]
check "listening line" grep -q "^aggregator listening on 127.0.0.1:$port, round 1/2, sites site_1,site_2" agg.log
check "a line per closed round" sh -c 'grep -q "^round 1/2 closed: 2 site(s)" agg.log && grep -q "^round 2/2 closed: 2 site(s).*finished" agg.log'
m=cons/aggregator/state/metrics.jsonl
check "two metrics lines" [ "$(wc -l <$m)" -eq 2 ]
for r in 1 2; do
    line=$(grep "^{\"round\":$r," $m)
    for k in '"site":"site_1"' '"site":"site_2"' '"train_loss":' '"global_dice_wt":' '"bytes_received":' '"bytes_sent":' '"train_seconds":' '"sites_reported":2'; do
        case $line in *"$k"*) ;; *) echo "FAIL: round $r metrics lack $k"; fail=1 ;; esac
    done
done
for s in site_1 site_2; do
    check "$s's final model is the aggregator's global model" cmp -s cons/sites/$s/state/final.ckpt cons/aggregator/state/global.ckpt
done
if [ $fail -ne 0 ]; then
    echo "--- agg.log"; cat agg.log; echo "--- site_1.log"; cat site_1.log; echo "--- site_2.log"; cat site_2.log
fi
exit $fail
