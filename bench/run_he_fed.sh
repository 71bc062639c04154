#!/usr/bin/env bash
# bench/run_he_fed.sh — an encrypted-aggregation round against a plain round
# in one run on this machine: `fedseg aggregator --model ref` (mutual TLS)
# with S fake sites on threads (bench/bench_fed.c, mode fed: no training, each
# site's update is a fixed change of the `ref` model, 7,766,372 parameters),
#   plain      FedAvg rounds
#   encrypted  the same rounds with encrypted = true: per round a fresh
#              collective key and sealed key shares among the S sites, each
#              site quantises and encrypts its update (1,897 BFV ciphertexts,
#              183 MB), the aggregator verifies and adds them, and t sites
#              decrypt the sum (the sites work on their own threads, as each
#              hospital would on its own machine, here sharing this
#              machine's cores)
#   enc_drop   encrypted rounds where one site leaves round 1 after its key
#              shares and before its upload: the upload stage ends at the
#              round deadline (DEADLINE s) and the other sites' sum is
#              decrypted
# and prints the median round wall time of each, the encrypted/plain ratio,
# the bytes each site uploads, and the aggregator's decryption stage and
# decode times per round (metrics.jsonl).
#
#   bench/run_he_fed.sh
#
# Environment: BUILD (default build/), SITES (10), ROUNDS (2), DEADLINE (120),
# OUT (default: a new folder under /tmp). Writes OUT/he_fed.jsonl.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
SITES=${SITES:-10}
ROUNDS=${ROUNDS:-2}
DEADLINE=${DEADLINE:-120}
if [[ -n "${OUT:-}" ]]; then mkdir -p "$OUT"; else OUT=$(mktemp -d /tmp/fedseg-bench-he-fed.XXXXXX); fi
OUT=$(cd "$OUT" && pwd)
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release; fi
cmake --build "$BUILD" -j "$(nproc)" --target fedseg bench_fed >/dev/null
B=$BUILD/bench/bench_fed
F=$BUILD/fedseg
J=$OUT/he_fed.jsonl
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
    grep -o '"encrypted":{[^}]*}' "$m" | sed "s/^/$name /" >&2 || true
  fi
}
run plain
run encrypted --encrypted --deadline "$DEADLINE"
if [[ "${DROP:-1}" != 0 ]]; then run enc_drop --encrypted --drop --deadline "$DEADLINE"; fi
python3 - "$J" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line); rows[r["run"]] = r
p, e = rows["plain"]["median_round_s"], rows["encrypted"]["median_round_s"]
print(f"plain round (median of {rows['plain']['rounds']}): {p:.2f} s")
print(f"encrypted round: {e:.2f} s  -> encrypted / plain = {e / p:.2f}")
print(f"aggregator peak memory: plain {rows['plain']['aggregator_vmhwm_mib']:.0f} MiB, "
      f"encrypted {rows['encrypted']['aggregator_vmhwm_mib']:.0f} MiB")
if "enc_drop" in rows:
    a1 = rows["enc_drop"]["aggregator_round_seconds"][0]
    print(f"encrypted round 1 with one dropout (the aggregator's wall time): {a1:.2f} s, including the "
          f"wait for the round deadline")
PY
