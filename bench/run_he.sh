#!/bin/sh
# bench/run_he.sh — encrypted aggregation side by side, in one run on one
# machine: fedseg's multiparty scheme (bench_he) against TenSEAL's CKKS at
# NVFlare's default context (bench/tenseal_he.py), same update size and number
# of sites; prints both and the ratios (bytes on the wire, end-to-end time).
#   PARAMS (default 7766372, the `ref` U-Net), SITES (10), DEVICE (cpu|cuda),
#   BUILD (build), VENV (a virtualenv with tenseal; made with pip if absent).
set -eu
cd "$(dirname "$0")/.."
PARAMS=${PARAMS:-7766372}
SITES=${SITES:-10}
DEVICE=${DEVICE:-cpu}
BUILD=${BUILD:-build}
VENV=${VENV:-${TMPDIR:-/tmp}/venv-he}
[ -x "$BUILD/bench/bench_he" ] || cmake --build "$BUILD" --target bench_he
if ! "$VENV/bin/python" -c "import tenseal" 2>/dev/null; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q tenseal numpy ||
    echo "run_he: could not install tenseal for $(python3 --version); TenSEAL side skipped"
fi
echo "== fedseg ($DEVICE)"
"$BUILD/bench/bench_he" --params "$PARAMS" --sites "$SITES" --device "$DEVICE" --json | tee /tmp/he_fs.$$
echo "== TenSEAL (CPU)"
if "$VENV/bin/python" bench/tenseal_he.py --params "$PARAMS" --sites "$SITES" --json | tee /tmp/he_ts.$$; then
  python3 - /tmp/he_fs.$$ /tmp/he_ts.$$ <<'PY'
import json, sys
f = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][-1]
t = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")][-1]
print(f"== ratio (TenSEAL / fedseg, this machine): wire {t['bytes_per_param'] / f['bytes_per_param']:.2f}x smaller, "
      f"encrypt {t['encrypt_s'] / f['encrypt_s']:.1f}x, aggregate {t['aggregate_s'] / f['aggregate_s']:.1f}x, "
      f"decrypt {t['decrypt_s'] / f['decrypt_s']:.1f}x, end to end {t['end_to_end_s'] / f['end_to_end_s']:.1f}x faster")
PY
fi
rm -f /tmp/he_fs.$$ /tmp/he_ts.$$
