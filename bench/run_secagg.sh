#!/usr/bin/env bash
# bench/run_secagg.sh — a secure-aggregation round against a plain round in
# one run on this machine: `fedseg aggregator --model ref` (mutual TLS) with
# S fake sites on threads (bench/bench_fed.c, mode fed: no training, each
# site's update is a fixed change of the `ref` model, 7,766,372 parameters),
#   plain    FedAvg rounds
#   secure   the same rounds with secure_agg = true (full SecAgg among the S
#            sites; the sites mask on their own threads, as each hospital
#            would on its own machine, here sharing this machine's cores)
#   secure_k4  the same with SecAgg+ (4 neighbours per site)
#   dropout  secure rounds where one site leaves round 1 after sharing its
#            keys and before its masked upload: the masked-input stage ends
#            at the round deadline (DEADLINE s), and the aggregator recovers
#            that site's pairwise masks; its time beyond the deadline wait is
#            what the recovery costs
#   flower_secagg  Flower's own SecAgg+ (bench/flower_secagg.py: its
#            SecAggPlusWorkflow and secaggplus_mod in Flower's Simulation
#            Engine) with the same clients, parameters, full SecAgg shares and
#            threshold, ROUNDS + 1 rounds (its first round starts the Ray
#            workers; the median is over the rest) — FLOWER=0 skips it
# and prints the median round wall time of each, the secure/plain ratio and
# the aggregator's unmasking time per round (metrics.jsonl).
#
#   bench/run_secagg.sh
#
# Environment: BUILD (default build/), SITES (10), ROUNDS (3), DEADLINE (20),
# FLOWER (1), FLWR_VENV (default /tmp/fedseg-flwr-venv; flwr[simulation] and
# numpy are installed there when missing), OUT (default: a new folder under
# /tmp). Writes OUT/secagg.jsonl.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
SITES=${SITES:-10}
ROUNDS=${ROUNDS:-3}
DEADLINE=${DEADLINE:-20}
FLOWER=${FLOWER:-1}
FLWR_VENV=${FLWR_VENV:-/tmp/fedseg-flwr-venv}
if [[ -n "${OUT:-}" ]]; then mkdir -p "$OUT"; else OUT=$(mktemp -d /tmp/fedseg-bench-secagg.XXXXXX); fi
OUT=$(cd "$OUT" && pwd)
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release; fi
cmake --build "$BUILD" -j "$(nproc)" --target fedseg bench_fed >/dev/null
B=$BUILD/bench/bench_fed
F=$BUILD/fedseg
J=$OUT/secagg.jsonl
: >"$J"
echo "machine: $(nproc --all) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1 /proc/loadavg)"
run() { # name args...
  local name=$1; shift
  echo "== $name" >&2
  rm -rf "$OUT/work_$name"
  "$B" fed --fedseg "$F" --sites "$SITES" --rounds "$ROUNDS" --poll-ms 100 --work "$OUT/work_$name" "$@" \
    | sed "s/^{/{\"run\":\"$name\",/" | tee -a "$J"
  local m; m=$(find "$OUT/work_$name" -name metrics.jsonl | head -1)
  if [[ -n "$m" ]]; then
    grep -o '"unmask_seconds":[0-9.]*,"unmask_stage_seconds":[0-9.]*' "$m" | sed "s/^/$name /" >&2 || true
  fi
}
run plain
run secure --secure
run secure_k4 --secure --neighbours 4
run dropout --secure --drop --deadline "$DEADLINE"
if [[ $FLOWER == 1 ]]; then
  if [[ ! -x "$FLWR_VENV/bin/python" ]] || ! "$FLWR_VENV/bin/python" -c 'import flwr, numpy, ray' 2>/dev/null; then
    echo "run_secagg.sh: installing flwr[simulation] and numpy into $FLWR_VENV" >&2
    /usr/bin/python3 -m venv "$FLWR_VENV"
    "$FLWR_VENV/bin/pip" install -q "flwr[simulation]" numpy
  fi
  echo "== flower_secagg" >&2
  (cd "$OUT" && "$FLWR_VENV/bin/python" "$ROOT/bench/flower_secagg.py" --clients "$SITES" --rounds $((ROUNDS + 1)) \
      2>"$OUT/flower_secagg.log") | sed 's/^{/{"run":"flower_secagg",/' | tee -a "$J"
fi
python3 - "$J" "$DEADLINE" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line); rows[r["run"]] = r
d = float(sys.argv[2])
p, s = rows["plain"]["median_round_s"], rows["secure"]["median_round_s"]
print(f"plain round (median of {rows['plain']['rounds']}): {p:.2f} s")
print(f"secure round: {s:.2f} s  -> secure / plain = {s / p:.2f} (target <= 1.25)")
if "secure_k4" in rows:
    k = rows["secure_k4"]["median_round_s"]
    print(f"secure round, SecAgg+ with 4 neighbours: {k:.2f} s  -> / plain = {k / p:.2f}")
if "flower_secagg" in rows:
    fr = rows["flower_secagg"]["round_seconds"][1:]
    fm = sorted(fr)[len(fr) // 2] if fr else float("nan")
    print(f"Flower SecAgg+ round (median of rounds 2..{len(fr) + 1}, {rows['flower_secagg']['clients']} clients, "
          f"full shares, threshold {rows['flower_secagg']['threshold']}): {fm:.2f} s  -> Flower / fedseg secure = "
          f"{fm / s:.2f}")
if "dropout" in rows:
    a1 = rows["dropout"]["aggregator_round_seconds"][0]
    print(f"secure round 1 with one dropout (the aggregator's wall time): {a1:.2f} s, of which the "
          f"masked-input stage waited for the round deadline ({d:.0f} s from the round's opening); "
          f"the unmasking stage times per round are listed above")
PY
