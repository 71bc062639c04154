#!/bin/sh
# tests/test_compose.sh — checks docker/compose.yaml (and compose.gpu.yaml)
# against freshly provisioned consortia, without a container engine, using
# docker/check_compose.py:
#   - a consortium provisioned for the compose network (`--aggregator
#     aggregator`, sites site_1..site_3) passes every check;
#   - one provisioned for another address (127.0.0.1:50151) fails them (the
#     sites could not reach the aggregator), so the checks can fail;
#   - a copy of compose.yaml whose aggregator kit is mounted writable fails.
# Needs FS_FEDSEG (the fedseg binary) and a python3 with PyYAML; exit 77
# (skip) without them.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
fedseg=${FS_FEDSEG:-}
[ -n "$fedseg" ] && [ -x "$fedseg" ] || { echo "FS_FEDSEG not set: skip"; exit 77; }
py=""
for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import yaml' 2>/dev/null; then py=$p; break; fi
done
[ -n "$py" ] || { echo "no python3 with PyYAML: skip"; exit 77; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { # expect(0|1) description args...
    want=$1; shift; what=$1; shift
    "$py" "$root/docker/check_compose.py" "$@" > "$tmp/out" 2>&1
    rc=$?
    if [ "$rc" -ne "$want" ]; then
        echo "FAIL: $what: exit $rc, expected $want"; cat "$tmp/out"; fail=1
    else
        echo "ok: $what ($(tail -n 1 "$tmp/out"))"
    fi
}

"$fedseg" provision --consortium testnet --aggregator aggregator --sites site_1,site_2,site_3 \
    --out "$tmp/kit" > /dev/null || { echo "FAIL: provision"; exit 1; }
"$fedseg" provision --consortium testnet --aggregator 127.0.0.1:50151 --sites site_1,site_2,site_3 \
    --out "$tmp/otherkit" > /dev/null || { echo "FAIL: provision"; exit 1; }
mkdir -p "$tmp/data/site_1" "$tmp/data/site_2" "$tmp/data/site_3" \
         "$tmp/run/aggregator" "$tmp/run/site_1" "$tmp/run/site_2" "$tmp/run/site_3"
dirs="--kit $tmp/kit --data $tmp/data --run $tmp/run"

# shellcheck disable=SC2086
check 0 "compose.yaml with a kit for the compose network" $dirs "$root/docker/compose.yaml"
# shellcheck disable=SC2086
check 0 "compose.yaml + compose.gpu.yaml" $dirs "$root/docker/compose.yaml" "$root/docker/compose.gpu.yaml"
check 1 "a kit provisioned for 127.0.0.1:50151" --kit "$tmp/otherkit" --data "$tmp/data" --run "$tmp/run" \
    "$root/docker/compose.yaml"
grep -q 'dials .127.0.0.1.' "$tmp/out" || { echo "FAIL: no reason about the address"; fail=1; }
sed 's|/aggregator:/kit:ro|/aggregator:/kit|' "$root/docker/compose.yaml" > "$tmp/rw.yaml"
# shellcheck disable=SC2086
check 1 "an aggregator kit mounted writable" $dirs "$tmp/rw.yaml"
grep -q 'not mounted read-only' "$tmp/out" || { echo "FAIL: no reason about the mount"; fail=1; }
exit $fail
