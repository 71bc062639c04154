#!/bin/sh
# tests/test_sim_dp.sh — `fedseg sim` with client-level differential privacy:
# 2 synthesized sites (coarse voxels, 3 cases each), 3 rounds of 1 local
# epoch of 3 steps on the CPU, --dp-clip 0.05 --dp-epsilon 8. Asserts: exit 0;
# the noise multiplier was calibrated and printed; each metrics line carries
# dp.epsilon, increasing, the last one <= 8; each node clipped its updates
# (log lines); the aggregator's config has dp = central. Then bad usage:
# --dp-noise without --dp-clip, --dp-clip alone. A second run with
# --dp-adaptive --dp-clip 5 (far above these updates' norms): every metrics
# line has next_clip, each round's clip is the previous round's next_clip
# and follows C·exp(−η(b̄ − γ)) of the published noised fraction, and the
# sites clip to the clip of each round's task; --dp-adaptive with
# --secure-agg is bad usage. About 35 s.
set -u
. "$(dirname "$0")/fedtest.sh"
fedtest_begin sim_dp_work
timeout 300 "$F" sim --sites 2 --rounds 3 --local-epochs 1 --steps 3 --batch 4 --cases-per-site 3,3 \
    --voxel-scale 2 --device cpu --dp-clip 0.05 --dp-epsilon 8 --out run >out.txt 2>err.txt
rc=$?
check "fedseg sim with DP exits 0 (got $rc)" [ $rc -eq 0 ]
check "the privacy line is printed" grep -Eq '^differential privacy: updates clipped to L2 norm 0.05, noise multiplier [0-9.]+, budget epsilon 8' out.txt
check "the aggregator runs dp = central" grep -q '^dp = central' run/config/aggregator.conf
check "metrics.jsonl: 3 lines" [ "$(wc -l <run/metrics.jsonl)" -eq 3 ]
eps=$(grep -o '"dp":{[^}]*}' run/metrics.jsonl | sed 's/.*"epsilon":\([0-9.eE+-]*\).*/\1/')
check "every round has dp.epsilon ($(echo $eps | tr '\n' ' '))" [ "$(echo "$eps" | grep -c .)" -eq 3 ]
check "epsilon increases and stays within 8" awk -v l="$(echo $eps)" 'BEGIN{n=split(l,e," "); if (n!=3) exit 1; for(i=2;i<=n;i++) if (e[i]<=e[i-1]) exit 1; if (e[n]>8 || e[1]<=0) exit 1}'
for s in site_1 site_2; do
    check "$s clipped its updates" sh -c "[ \$(grep -c 'update L2 norm .* (differential privacy)' run/logs/$s.log) -ge 3 ]"
done
timeout 300 "$F" sim --sites 2 --rounds 3 --local-epochs 1 --steps 3 --batch 4 --cases-per-site 3,3 \
    --voxel-scale 2 --device cpu --dp-clip 5 --dp-epsilon 8 --dp-adaptive --out run2 >out2.txt 2>err2.txt
rc=$?
check "fedseg sim --dp-adaptive exits 0 (got $rc)" [ $rc -eq 0 ]
check "the aggregator runs dp_adaptive = true" grep -q '^dp_adaptive = true' run2/config/aggregator.conf
clips=$(grep -o '"dp":{[^}]*}' run2/metrics.jsonl | sed 's/.*"clip":\([0-9.eE+-]*\),.*"unclipped_fraction_noised":\([0-9.eE+-]*\),"next_clip":\([0-9.eE+-]*\).*/\1 \2 \3/')
check "each round's clip is the previous next_clip, the first 5 ($(echo $clips | tr '\n' ' '))" awk -v l="$(echo $clips)" 'BEGIN{n=split(l,e," "); if (n!=9) exit 1; if (e[1]!=5) exit 1; for(i=4;i<=n;i+=3) if (e[i]!=e[i-1]) exit 1}'
check "each next clip is C*exp(-0.2*(b - 0.5)) of the published noised fraction b" awk -v l="$(echo $clips)" 'BEGIN{n=split(l,e," "); for(i=1;i<=n;i+=3){w=e[i]*exp(-0.2*(e[i+1]-0.5)); d=e[i+2]-w; if (d<0) d=-d; if (d>1e-5*w) exit 1}}'
last=$(echo $clips | awk '{print $7}')
check "site_1 clipped round 3 to that round's clip $last" sh -c "grep 'round 3: update L2 norm' run2/logs/site_1.log | grep -q ' $(printf %.4g $last) (differential privacy)'"
"$F" sim --dp-clip 1 --dp-noise 1 --dp-adaptive --secure-agg >/dev/null 2>&1; rc=$?
check "--dp-adaptive with --secure-agg is bad usage (got $rc)" [ $rc -eq 2 ]
"$F" sim --dp-noise 1 >/dev/null 2>&1; rc=$?
check "--dp-noise without --dp-clip is bad usage (got $rc)" [ $rc -eq 2 ]
"$F" sim --dp-clip 1 >/dev/null 2>&1; rc=$?
check "--dp-clip alone is bad usage (got $rc)" [ $rc -eq 2 ]
if [ $fail -ne 0 ]; then
    for f in out.txt err.txt run/logs/aggregator.log out2.txt run2/logs/aggregator.log run2/metrics.jsonl; do echo "--- $f"; cat $f; done
fi
exit $fail
