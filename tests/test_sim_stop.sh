#!/bin/sh
# tests/test_sim_stop.sh — `fedseg sim` never leaves a process behind.
# Three runs of a long federation (2 coarse synthesized sites, 50 rounds),
# each interrupted once the first round's row is printed:
#   1. SIGINT to the simulation (Ctrl-C) → it stops every child and exits 130;
#   2. SIGKILL to one node → the simulation names it ("site_2 ... killed by
#      signal 9") with the end of its log, stops the rest, exits 1;
#   3. SIGKILL to the simulation itself → its children get SIGTERM from the
#      kernel (parent-death signal) and end by themselves.
# After each: every process the run started has ended. About 30-60 s.
# shellcheck disable=SC2046 # lists of pids are split into words on purpose
set -u
. "$(dirname "$0")/fedtest.sh"
fedtest_begin sim_stop_work
"$F" synth --out data --sites 2 --cases-per-site 3,3 --voxel-scale 2 --quiet --threads 1 || exit 1

# start_sim RUN: starts a long simulation in the background (pid in $sim)
# and waits until the first round's row is printed.
start_sim() {
    "$F" sim --data data --rounds 50 --local-epochs 1 --steps 3 --batch 4 --device cpu --threads 1 \
        --out "$1" >"$1.out" 2>"$1.err" &
    sim=$!
    i=0
    while ! grep -Eq '^ +1 +2/2 \|' "$1.out" 2>/dev/null && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
    grep -Eq '^ +1 +2/2 \|' "$1.out" || { echo "FAIL: $1: no round closed"; cat "$1.out" "$1.err"; kill $sim; exit 1; }
}
pids_of() { sed -n 's/^started .* (pid \([0-9]*\)).*/\1/p' "$1.out"; }
pid_of() { sed -n "s/^started $2 (pid \([0-9]*\)).*/\1/p" "$1.out"; }
# wait_gone SECONDS PID...: 0 when every PID has ended within SECONDS
wait_gone() {
    t=$1; shift
    i=0
    while [ $i -lt $((t * 10)) ]; do
        alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive -eq 0 ] && return 0
        sleep 0.1; i=$((i + 1))
    done
    for p in "$@"; do kill -0 "$p" 2>/dev/null && echo "    pid $p is still alive: $(cat /proc/$p/cmdline 2>/dev/null | tr '\0' ' ')"; done
    return 1
}
# watchdog: nothing may hang the test
sh -c 'trap "kill \$s; exit 0" TERM; sleep 540 & s=$!; wait $s; kill -TERM "$1"' dog $$ >/dev/null 2>&1 &
dog=$!

# 1. Ctrl-C
start_sim int
check "int: three children listed" [ "$(pids_of int | wc -l)" -eq 3 ]
kill -INT $sim
wait $sim; rc=$?
check "int: exit 130 after SIGINT (got $rc)" [ $rc -eq 130 ]
check "int: says it stops every process" grep -q 'stopping every process' int.out
check "int: no process left" wait_gone 1 $(pids_of int)

# 2. a node dies under the simulation
start_sim die
victim=$(pid_of die site_2)
kill -KILL "$victim"
wait $sim; rc=$?
check "die: exit 1 when a node dies (got $rc)" [ $rc -eq 1 ]
check "die: names the dead node and the signal" grep -q "site_2 (pid $victim) was killed by signal 9" die.err
check "die: says the federation did not finish" grep -q 'did not finish' die.err
check "die: no process left" wait_gone 1 $(pids_of die)

# 3. the simulation itself is SIGKILLed: its children follow
start_sim orphan
kill -KILL $sim
wait $sim 2>/dev/null
check "orphan: the children end by themselves after the simulation died" wait_gone 30 $(pids_of orphan)

kill $dog 2>/dev/null
if [ $fail -ne 0 ]; then
    for f in int.out int.err die.out die.err orphan.out orphan.err; do echo "--- $f"; cat $f; done
fi
exit $fail
