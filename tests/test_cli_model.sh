#!/bin/sh
# tests/test_cli_model.sh — `fedseg train / eval / predict / info` end to end on
# a tiny synthetic federation: training writes a checkpoint and prints Dice,
# eval and predict read it back, predict writes a NIfTI with the input's
# geometry and BraTS labels, and truncated, corrupt, foreign or mismatched
# checkpoints are refused with a message naming the file. Bad usage exits 2.
set -u
F=${FS_FEDSEG:?FS_FEDSEG must name the fedseg binary}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
check() { if eval "$2"; then :; else echo "FAIL: $1"; fail=1; fi; }

"$F" synth --out "$T/data" --sites 2 --cases-per-site 3,2 --seed 3 > "$T/synth.log" 2>&1
check "synth ran" '[ -d "$T/data/site_1" ] && [ -d "$T/data/site_2" ]'
"$F" train --data "$T/data/site_1,$T/data/site_2" --model tiny --epochs 2 --steps 3 --batch 4 \
    --out "$T/m.ckpt" --metrics "$T/m.jsonl" --quiet > "$T/train.log" 2>&1
rc=$?
cat "$T/train.log"
check "train exits 0" '[ $rc -eq 0 ]'
check "checkpoint written" '[ -s "$T/m.ckpt" ]'
check "epoch lines with Dice" 'grep -q "epoch 2/2 .*val Dice WT" "$T/train.log"'
check "per-site Dice lines" '[ $(grep -c "WT .* TC .* ET" "$T/train.log") -ge 3 ]'
check "metrics JSON lines" '[ $(grep -c "\"epoch\"" "$T/m.jsonl") -eq 2 ]'
check "no temporary files left" '[ -z "$(ls -A "$T" | grep tmp)" ]'

"$F" eval --model "$T/m.ckpt" --data "$T/data/site_1" --json > "$T/eval.json"
check "eval JSON" 'grep -q "\"mean\":{\"wt\"" "$T/eval.json"'
check "eval lists 3 cases" '[ $(grep -o "\"id\"" "$T/eval.json" | wc -l) -eq 3 ]'
"$F" eval --model "$T/m.ckpt" --data "$T/data/site_1" --split val > "$T/eval.txt"
check "eval --split val: one held-out case" '[ $(wc -l < "$T/eval.txt") -eq 3 ]'

CASE=$(ls -d "$T"/data/site_1/*/ | head -1)
"$F" predict --model "$T/m.ckpt" --case "$CASE" --out "$T/pred.nii.gz" --png "$T/pred.png" > "$T/pred.log" 2>&1
check "predict wrote NIfTI" '[ -s "$T/pred.nii.gz" ]'
check "predict wrote PNG" '[ "$(head -c 4 "$T/pred.png" | tail -c 3)" = "PNG" ]'
if command -v nifti_tool >/dev/null 2>&1; then
  check "prediction header valid" 'nifti_tool -check_hdr -check_nim -infiles "$T/pred.nii.gz" >/dev/null 2>&1'
  T1=$(ls "$CASE"*_t1.nii* | head -1)
  d1=$(nifti_tool -disp_hdr -field dim -infiles "$T1" 2>/dev/null | tail -1 | awk '{print $4,$5,$6,$7}')
  d2=$(nifti_tool -disp_hdr -field dim -infiles "$T/pred.nii.gz" 2>/dev/null | tail -1 | awk '{print $4,$5,$6,$7}')
  check "prediction has the input's dims ($d1 vs $d2)" '[ "$d1" = "$d2" ]'
fi

"$F" info --model tiny > "$T/info.txt"
check "info tiny: 487388" 'grep -q "total parameters: 487388" "$T/info.txt"'
"$F" info --model ref | grep -q "total parameters: 7766372" || { echo "FAIL: info ref"; fail=1; }
"$F" info --model "$T/m.ckpt" | grep -q "preset tiny" || { echo "FAIL: info on a checkpoint"; fail=1; }

# hostile checkpoints: each refused, message names the file
n=$(wc -c < "$T/m.ckpt")
head -c $((n / 2)) "$T/m.ckpt" > "$T/trunc.ckpt"
cp "$T/m.ckpt" "$T/flip.ckpt"
printf '\377' | dd of="$T/flip.ckpt" bs=1 seek=5000 conv=notrunc 2>/dev/null
echo "hello" > "$T/foreign.ckpt"
for c in trunc flip foreign; do
  "$F" eval --model "$T/$c.ckpt" --data "$T/data/site_1" > /dev/null 2> "$T/err.txt"
  rc=$?
  check "$c checkpoint refused (rc $rc)" '[ $rc -ne 0 ]'
  check "$c: message names the file" 'grep -q "$c.ckpt" "$T/err.txt"'
done
"$F" train --data "$T/data/site_1" --model small --epochs 1 --steps 1 --init "$T/m.ckpt" --out "$T/x.ckpt" --quiet > /dev/null 2> "$T/err.txt"
check "init with another preset refused" '[ $? -ne 0 ] && grep -q "tiny" "$T/err.txt"'
check "refused run wrote no checkpoint" '[ ! -e "$T/x.ckpt" ]'

# bad usage -> exit 2 with a message
"$F" train --data "$T/data/site_1" 2>/dev/null; check "train without --out exits 2" '[ $? -eq 2 ]'
"$F" train --data x --out y --epochs zero 2>/dev/null; check "non-numeric --epochs exits 2" '[ $? -eq 2 ]'
"$F" train --data x --out y --model huge 2>/dev/null; check "unknown preset exits 2" '[ $? -eq 2 ]'
"$F" train --data "$T/nowhere" --out "$T/y.ckpt" --quiet 2> "$T/err.txt"; check "missing data folder fails" '[ $? -eq 1 ] && grep -q nowhere "$T/err.txt"'
"$F" nosuchcommand 2>/dev/null; check "unknown command exits 2" '[ $? -eq 2 ]'
for cmd in synth train eval predict info; do
  "$F" $cmd --help | grep -q "usage: fedseg $cmd" || { echo "FAIL: $cmd --help"; fail=1; }
done
[ $fail -eq 0 ] && echo "all checks passed"
exit $fail
