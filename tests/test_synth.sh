#!/bin/sh
# tests/test_synth.sh — `fedseg synth` from the command line:
#   - --help works; bad arguments exit 2 with a message (zero sites, a
#     non-numeric value, a list whose length differs from --sites, a malformed
#     list, an unknown option, a missing --out, an --out that is a file or a
#     non-empty folder of something else);
#   - a missing anatomy exits 1 and says how to get one;
#   - same seed twice (1 thread, then 2 threads) gives identical bytes in every
#     file; an earlier synth output is replaced; another seed gives other bytes;
#   - montage.png is a PNG, site.json and federation.json are written;
#   - --heterogeneity strong makes the case numbers its --help names, and
#     its sites 2 and 3 outline edema more tightly than site 1.
# Needs FS_FEDSEG (set by tests/CMakeLists.txt). Skips (77) without the
# default anatomy (Debian mricron-data).
set -u
FEDSEG=${FS_FEDSEG:?FS_FEDSEG is not set}
ANAT=/usr/share/mricron/templates/ch2bet.nii.gz
[ -r "$ANAT" ] || { echo "SKIP: $ANAT missing (apt-get install mricron-data)"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/fs_synth_test.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }

"$FEDSEG" synth --help > "$T/help" 2>&1 || bad "--help exit code"
grep -q -- "--cases-per-site" "$T/help" || bad "--help does not describe the options"

# expect_usage DESCRIPTION ARGS... : exit code 2 and a message on stderr
expect_usage() {
    what=$1; shift
    "$FEDSEG" synth "$@" > "$T/out" 2> "$T/err"
    rc=$?
    [ $rc -eq 2 ] || bad "$what: exit code $rc, want 2"
    [ -s "$T/err" ] || bad "$what: no message"
}
mkdir -p "$T/foreign" && echo x > "$T/foreign/notes.txt"
echo x > "$T/afile"
expect_usage "zero sites" --out "$T/o" --sites 0
expect_usage "non-numeric sites" --out "$T/o" --sites three
expect_usage "negative seed" --out "$T/o" --seed -1
expect_usage "list length != sites" --out "$T/o" --sites 3 --cases-per-site 2,2
expect_usage "malformed list" --out "$T/o" --cases-per-site 2,,2
expect_usage "zero cases" --out "$T/o" --cases-per-site 2,0,2
expect_usage "unknown option" --out "$T/o" --colour blue
expect_usage "missing --out" --sites 2
expect_usage "missing value" --out
expect_usage "bad voxel scale" --out "$T/o" --voxel-scale 9
expect_usage "non-empty foreign --out" --out "$T/foreign" --cases-per-site 1
expect_usage "--out is a file" --out "$T/afile" --cases-per-site 1
[ -f "$T/foreign/notes.txt" ] || bad "the foreign folder was touched"
[ ! -e "$T/o" ] || bad "a refused run created its output folder"

"$FEDSEG" synth --out "$T/m" --cases-per-site 1 --anatomy "$T/nope.nii.gz" > "$T/out" 2> "$T/err"
rc=$?
[ $rc -eq 1 ] || bad "missing anatomy: exit code $rc, want 1"
grep -q "mricron-data" "$T/err" || bad "missing anatomy: message does not say how to get it: $(cat "$T/err")"
grep -q "nope.nii.gz" "$T/err" || bad "missing anatomy: message does not name the file"

ARGS="--cases-per-site 1,1,1 --voxel-scale 1.5 --quiet"
"$FEDSEG" synth --out "$T/a" $ARGS --seed 5 --threads 1 || bad "run a failed"
"$FEDSEG" synth --out "$T/b" $ARGS --seed 5 --threads 2 || bad "run b failed"
diff -r "$T/a" "$T/b" > /dev/null || bad "same seed, different bytes (1 vs 2 threads)"
n=$(find "$T/a" -name '*.nii.gz' | wc -l)
[ "$n" -eq 15 ] || bad "expected 15 volumes, found $n"
for k in 1 2 3; do
    f="$T/a/site_$k/montage.png"
    [ "$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')" = "89504e47" ] || bad "$f is not a PNG"
    [ -s "$T/a/site_$k/site.json" ] || bad "site_$k/site.json missing"
done
grep -q '"complete": true' "$T/a/federation.json" || bad "federation.json not marked complete"

# An earlier synth output is replaced: run a again with fewer sites.
"$FEDSEG" synth --out "$T/a" --cases-per-site 1 --quiet --seed 5 --voxel-scale 2 || bad "rerun into a failed"
[ ! -e "$T/a/site_2" ] || bad "stale site_2 left behind by the rerun"
[ -f "$T/a/site_1/site1_case001/site1_case001_seg.nii.gz" ] || bad "rerun wrote no seg"

"$FEDSEG" synth --out "$T/c" $ARGS --seed 6 || bad "run c failed"
for m in t1 flair seg; do
    cmp -s "$T/b/site_1/site1_case001/site1_case001_$m.nii.gz" "$T/c/site_1/site1_case001/site1_case001_$m.nii.gz" &&
        bad "seeds 5 and 6 give the same $m"
done
# The strong preset (docs/data.md): the default case numbers are those the
# help names, and the annotation-style shift points to tighter outlines at
# sites 2 and 3 (edema label threshold above site 1's).
"$FEDSEG" synth --out "$T/s" --heterogeneity strong --voxel-scale 4 --seed 3 --threads 1 --quiet ||
    bad "strong run failed"
want=$(sed -n 's/.*strong \([0-9]*,[0-9]*,[0-9]*\)).*/\1/p' "$T/help")
got=$(for k in 1 2 3; do ls -d "$T/s/site_$k"/site${k}_case* | wc -l; done | paste -sd, -)
[ -n "$want" ] && [ "$got" = "$want" ] || bad "strong: --help says cases '$want', synth made $got"
thr() { sed -n 's/.*"edema_probability_threshold": *\([0-9.]*\).*/\1/p' "$T/s/site_$1/site.json"; }
for k in 2 3; do
    awk -v a="$(thr $k)" -v b="$(thr 1)" 'BEGIN { exit !(a + 0 > b + 0 && b + 0 > 0) }' ||
        bad "strong: site_$k edema threshold '$(thr $k)' is not tighter than site_1's '$(thr 1)'"
done
[ $fail -eq 0 ] && echo "all checks passed"
exit $fail
