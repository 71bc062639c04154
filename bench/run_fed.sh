#!/usr/bin/env bash
# bench/run_fed.sh — the federation benchmark in one run on this machine: raw
# loopback TCP (the ceiling), the aggregator's ingest rate (10 sites pushing
# `ref`-sized updates concurrently; plaintext and mutual TLS), round overhead
# of `fedseg aggregator` with 10 fake sites, and the same rounds with Flower
# (from pip); prints the table and the two targets as met / NOT met.
#
#   bench/run_fed.sh
#
# Environment:
#   BUILD      build folder (default: build/ in the repository); configured
#              (Release) and built (targets fedseg, bench_fed) when needed
#   SITES      sites / Flower clients (default 10)
#   ROUNDS     rounds per federation run (default 3)
#   REPS       repetitions of the TCP and ingest measurements (default 3)
#   FLWR_VENV  virtual environment with flwr and numpy (default
#              /tmp/fedseg-flwr-venv; created with /usr/bin/python3 -m venv and
#              `pip install flwr numpy` when missing)
#   FLOWER     0 to skip Flower (default 1)
#   OUT        folder for the results (default: a new folder under /tmp)
#
# Writes OUT/fed.jsonl (one JSON object per measurement, in the order run),
# OUT/machine.json and OUT/fed_results.json (the table's figures and the
# targets), and work folders OUT/work_*. Exit 1 when a measurement fails.
# What each mode measures: the top of bench/bench_fed.c and
# bench/flower_bench.py; the figures: docs/benchmarks.md § Federation.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
SITES=${SITES:-10}
ROUNDS=${ROUNDS:-3}
REPS=${REPS:-3}
FLWR_VENV=${FLWR_VENV:-/tmp/fedseg-flwr-venv}
FLOWER=${FLOWER:-1}
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
else
  OUT=$(mktemp -d /tmp/fedseg-bench-fed.XXXXXX)
fi
OUT=$(cd "$OUT" && pwd)

# --- build ---------------------------------------------------------------------
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$BUILD" -j "$(nproc)" --target fedseg bench_fed
B=$BUILD/bench/bench_fed
F=$BUILD/fedseg

# --- Flower ------------------------------------------------------------------------
FPY=""
if [[ $FLOWER == 1 ]]; then
  if [[ ! -x "$FLWR_VENV/bin/python" ]] || ! "$FLWR_VENV/bin/python" -c 'import flwr, numpy' 2>/dev/null; then
    echo "run_fed.sh: installing flwr and numpy into $FLWR_VENV" >&2
    /usr/bin/python3 -m venv "$FLWR_VENV"
    "$FLWR_VENV/bin/pip" install -q flwr numpy
  fi
  FPY=$FLWR_VENV/bin/python
fi

# --- machine -----------------------------------------------------------------------
/usr/bin/python3 - "$OUT/machine.json" "$FPY" <<'EOF'
import json, os, platform, subprocess, sys, time
info = {}
try:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if ":" in line:
                k, v = (t.strip() for t in line.split(":", 1))
                info.setdefault(k, v)
except OSError:
    pass
flwr = None
if sys.argv[2]:
    flwr = subprocess.run([sys.argv[2], "-c", "import flwr; print(flwr.__version__)"],
                          capture_output=True, text=True).stdout.strip() or None
json.dump(dict(cpu=info.get("model name", "unknown"), cores=os.cpu_count(),
               kernel=platform.release(), load_at_start=os.getloadavg(), flwr=flwr,
               date=time.strftime("%Y-%m-%d %H:%M:%S %Z")), open(sys.argv[1], "w"), indent=1)
EOF
echo "machine: $(tr -d '\n' < "$OUT/machine.json" | tr -s ' ')"

# --- measurements, one after the other -----------------------------------------------
J=$OUT/fed.jsonl
: > "$J"
run() { # run LABEL COMMAND... : appends the command's JSON line to $J
  local label=$1; shift
  echo "== $label: $*" >&2
  "$@" | tee -a "$J"
}
run "raw TCP, 1 connection" "$B" tcp --mib 2048 --conns 1 --reps "$REPS"
run "raw TCP, $SITES connections" "$B" tcp --mib 2048 --conns "$SITES" --reps "$REPS"
run "transport only, plaintext" "$B" ingest --sink --tls 0 --sites "$SITES" --reps "$REPS" --work "$OUT/work_sink0"
run "transport only, mTLS" "$B" ingest --sink --tls 1 --sites "$SITES" --reps "$REPS" --work "$OUT/work_sink1"
run "ingest harness, plaintext" "$B" ingest --tls 0 --sites "$SITES" --reps "$REPS" --work "$OUT/work_ingest0"
run "ingest harness, mTLS" "$B" ingest --tls 1 --sites "$SITES" --reps "$REPS" --work "$OUT/work_ingest1"
run "fedseg aggregator, ingest (barrier)" "$B" fed --fedseg "$F" --sites "$SITES" --rounds "$ROUNDS" --barrier --work "$OUT/work_fedb"
run "fedseg aggregator, rounds" "$B" fed --fedseg "$F" --sites "$SITES" --rounds "$ROUNDS" --work "$OUT/work_fed"
if [[ -n "$FPY" ]]; then
  run "Flower, plaintext" "$FPY" "$ROOT/bench/flower_bench.py" --clients "$SITES" --rounds "$ROUNDS" \
    2> "$OUT/flower_plain.log"
  run "Flower, TLS" "$FPY" "$ROOT/bench/flower_bench.py" --clients "$SITES" --rounds "$ROUNDS" \
    --tls "$OUT/work_fed/cons/aggregator" 2> "$OUT/flower_tls.log"
fi
run "raw TCP again, 1 connection" "$B" tcp --mib 2048 --conns 1 --reps "$REPS"

# --- table -----------------------------------------------------------------------------
/usr/bin/python3 - "$J" "$OUT/machine.json" "$OUT/fed_results.json" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
machine = json.load(open(sys.argv[2]))
tcp = [r for r in rows if r.get("mode") == "tcp"]
# The ceiling is the client/server pair (one connection, 1 MiB writes), the
# better of its two measurements (start and end of the run); the figure with
# one connection per site is printed for reference.
ceiling = max(r["mb_per_s"] for r in tcp if r["conns"] == 1)
print()
print(f"machine: {machine['cpu']}, {machine['cores']} cores; load at start {machine['load_at_start'][0]:.2f}")
print()
print("| measurement | MB/s | % of raw TCP | server peak RSS | load |")
print("|---|---|---|---|---|")
def line(name, rate, rss="", load=""):
    print(f"| {name} | {rate:.0f} | {100 * rate / ceiling:.0f}% | {rss} | {load} |")
for r in tcp:
    line(f"raw TCP, {r['conns']} connection(s), 1 MiB writes", r["mb_per_s"], "", f"{r['load1']:.1f}")
ing = {}
for r in rows:
    if r.get("mode") == "ingest":
        sink = r["server"].startswith("sink")
        tag = ("transport only (decode, drop)" if sink else "ingest harness (transport + round.c)") + \
              (", mTLS" if r["tls"] else ", plaintext")
        ing[(sink, r["tls"])] = r["mb_per_s"]
        line(tag, r["mb_per_s"], f"{r['server_vmhwm_mib']:.0f} MiB", f"{r['load1']:.1f}")
fed = [r for r in rows if r.get("mode") == "fed"]
for r in fed:
    if r["barrier"]:
        ing["real"] = r["ingest_mb_per_s"]
        line("`fedseg aggregator` ingest, mTLS", r["ingest_mb_per_s"], f"{r['aggregator_vmhwm_mib']:.0f} MiB",
             f"{r['load1']:.1f}")
print()
print(f"ceiling = raw TCP, one connection, the better of the two measurements of this run: {ceiling:.0f} MB/s")
print()
print("| federation, round of 10 sites x ref update, 0 s training | median round (s) | rounds (s) | server peak RSS |")
print("|---|---|---|---|")
fs_round = None
for r in fed:
    if not r["barrier"]:
        fs_round = r["median_round_s"]
        dl = sorted(r["last_download_done_s"])[len(r["last_download_done_s"]) // 2]
        print(f"| fedseg aggregator (mTLS; sites poll every {r['poll_ms']} ms; every site had the model "
              f"{dl:.2f} s into the round, median) | {r['median_round_s']:.2f} | "
              f"{', '.join(f'{x:.2f}' for x in r['round_seconds'])} | {r['aggregator_vmhwm_mib']:.0f} MiB |")
fl = {}
for r in rows:
    if r.get("impl") == "flower":
        fl[r["tls"]] = r["median_round_s"]
        print(f"| Flower {r['flwr']} ({r['transport']}) | {r['median_round_s']:.2f} | "
              f"{', '.join(f'{x:.2f}' for x in r['round_seconds'])} | {r['server_peak_rss_mib']:.0f} MiB |")
print()
targets = []
if fs_round is not None and fl:
    for tls, f in sorted(fl.items()):
        ok = fs_round <= f / 10
        targets.append(dict(target="round overhead <= Flower's / 10", flower_tls=tls, fedseg_s=fs_round,
                            flower_s=f, ratio=f / fs_round, met=ok))
        print(f"target: fedseg round overhead <= Flower ({'TLS' if tls else 'plaintext'}) / 10: "
              f"{fs_round:.2f} s vs {f:.2f} s = {f / fs_round:.1f}x less -> {'met' if ok else 'NOT met'}")
for key, name in (((False, 0), "ingest harness, plaintext"), ((False, 1), "ingest harness, mTLS"),
                  ("real", "fedseg aggregator, mTLS")):
    if key in ing:
        ok = ing[key] >= 0.5 * ceiling
        targets.append(dict(target="ingest >= 50% of raw TCP", case=name, mb_per_s=ing[key],
                            tcp_mb_per_s=ceiling, share=ing[key] / ceiling, met=ok))
        print(f"target: ingest ({name}) >= 50% of raw TCP: {ing[key]:.0f} of {ceiling:.0f} MB/s = "
              f"{100 * ing[key] / ceiling:.0f}% -> {'met' if ok else 'NOT met'}")
json.dump(dict(machine=machine, measurements=rows, tcp_ceiling_mb_per_s=ceiling, targets=targets),
          open(sys.argv[3], "w"), indent=1)
EOF
echo "results: $OUT"
