#!/bin/sh
# tests/test_fault_tls.sh — clients the aggregator must refuse, as real
# processes against a real `fedseg aggregator` on 127.0.0.1:
#   - no client certificate: `openssl s_client` (TLS, HTTP/2 ALPN, trusting
#     the consortium CA, presenting no certificate);
#   - a certificate from another CA: `fedseg node` with the consortium's CA
#     (so it trusts the aggregator) but the key and certificate of site_1 in
#     another consortium — a node retrying with backoff until stopped;
#   - an identity not on the list: `fedseg node` with "mallory"'s kit, signed
#     by the consortium CA but absent from the aggregator's `sites` — the
#     node's Join is refused, which is fatal (exit 1).
# Asserts: each is refused, the aggregator's log carries the reason (the TLS
# handshake failure for the first two, the identity for the third), none of
# them joins, and afterwards site_1 and site_2 run the federation's round and
# every process exits 0.
# Covered elsewhere, not repeated here: the same three refusals against the
# transport alone (tests/test_transport.c), and malformed messages, a wrong
# parameter count, NaN/Inf values, a stale round id (replay), an oversized
# stream and a wrong CRC, each refused with the round going on
# (tests/test_agg_server.c). About 15-25 s.
# shellcheck disable=SC2154 # p_site_* are assigned through eval
set -u
command -v openssl >/dev/null 2>&1 || { echo "skip: the openssl program is not installed"; exit 77; }
. "$(dirname "$0")/fedtest.sh"
fedtest_begin fault_tls_work
"$F" synth --out data --sites 2 --cases-per-site 2,2 --voxel-scale 2 --quiet --threads 1 || exit 1
"$F" provision --consortium faults --aggregator 127.0.0.1 --sites site_1,site_2,mallory --out cons >/dev/null || exit 1
"$F" provision --consortium rogue --aggregator 127.0.0.1 --sites site_1 --out rogue >/dev/null || exit 1

# mallory has a valid certificate of this consortium but is not admitted
"$F" aggregator --config cons/aggregator/aggregator.conf --sites site_1,site_2 --listen 127.0.0.1:0 \
    --port-file port --rounds 1 --steps-per-epoch 2 --join-wait-s 60 --linger-s 5 --poll-ms 250 --device cpu \
    >agg.log 2>&1 &
apid=$!
i=0
while [ ! -s port ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -s port ] || { echo "FAIL: the aggregator did not start"; cat agg.log; kill $apid; exit 1; }
port=$(cat port)
sh -c 'trap "kill \$s; exit 0" TERM; sleep 120 & s=$!; wait $s; kill "$@"' dog $apid >/dev/null 2>&1 &
dog=$!
lines() { wc -l <agg.log; }

# 1. no client certificate
n0=$(lines)
timeout 20 openssl s_client -connect 127.0.0.1:$port -CAfile cons/ca/ca.crt -alpn h2 -verify_return_error \
    </dev/null >s_client.log 2>&1
sleep 0.5
tail -n +$((n0 + 1)) agg.log >nocert.log
check "no certificate: the aggregator logs why (peer did not return a certificate)" \
    grep -qi 'peer did not return a certificate' nocert.log

# 2. a certificate from another CA (trusting the right one)
n0=$(lines)
timeout 60 "$F" node --config cons/sites/site_1/node.conf --data data/site_1 --aggregator 127.0.0.1:$port \
    --device cpu --threads 1 --set cert="$PWD/rogue/sites/site_1/site_1.crt" \
    --set key="$PWD/rogue/sites/site_1/site_1.key" --set backoff_max_s=1 --set rpc_timeout_s=2 >rogue.log 2>&1 &
rpid=$!
i=0
while { [ "$(grep -c 'retry' rogue.log)" -lt 2 ] || ! grep -q 'certificate verify failed' agg.log; } && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
kill -TERM $rpid
wait $rpid; rr=$?
tail -n +$((n0 + 1)) agg.log >rogueagg.log
check "other CA: the node was refused and kept retrying" [ "$(grep -c 'retry' rogue.log)" -ge 2 ]
check "other CA: the node stops on SIGTERM with 0 (got $rr)" [ $rr -eq 0 ]
check "other CA: the aggregator logs why (certificate verify failed)" \
    grep -qi 'certificate verify failed' rogueagg.log
check "other CA: it never joined" sh -c "! grep -q 'site site_1 joined' rogueagg.log"

# 3. an identity not on the list
n0=$(lines)
timeout 60 "$F" node --config cons/sites/mallory/node.conf --data data/site_1 --aggregator 127.0.0.1:$port \
    --device cpu --threads 1 >mallory.log 2>&1
rm_=$?
tail -n +$((n0 + 1)) agg.log >malloryagg.log
check "mallory: the node's Join is refused, fatally (exit $rm_)" [ $rm_ -eq 1 ]
check "mallory: the node says why" grep -q "not on the site list" mallory.log
check "mallory: the aggregator logs the identity and the reason" \
    grep -q "site mallory refused: not on the site list" malloryagg.log

# the federation is undisturbed
for s in site_1 site_2; do
    "$F" node --config cons/sites/$s/node.conf --data data/$s --aggregator 127.0.0.1:$port --device cpu \
        --threads 1 --set batch=4 >$s.log 2>&1 &
    eval "p_$s=\$!"
done
wait $p_site_1; r1=$?
wait $p_site_2; r2=$?
wait $apid; ra=$?
kill $dog 2>/dev/null
check "site_1 exits 0 (got $r1)" [ $r1 -eq 0 ]
check "site_2 exits 0 (got $r2)" [ $r2 -eq 0 ]
check "the aggregator exits 0 (got $ra)" [ $ra -eq 0 ]
check "the round counted site_1 and site_2 only" sh -c \
    "grep -q '\"sites_reported\":2,' cons/aggregator/state/metrics.jsonl && ! grep -q mallory cons/aggregator/state/metrics.jsonl"
if [ $fail -ne 0 ]; then
    echo "--- agg.log"; cat agg.log
    echo "--- s_client.log"; cat s_client.log
    echo "--- rogue.log"; cat rogue.log
    echo "--- mallory.log"; cat mallory.log
fi
exit $fail
