#!/bin/sh
# bench/cross_site.sh — the cross-site matrix of a heterogeneity preset: for
# each site s, train `tiny` on site s alone, then score that model on every
# site's held-out cases (`fedseg eval --split val`). Row s, column t = whole-
# tumour Dice on site t of the model trained on site s; "loss" = the diagonal
# minus the off-diagonal mean of the row (what a model loses on other sites'
# patients compared with its own site's).
#
#   FEDSEG=build/fedseg OUT=run/cross sh bench/cross_site.sh [iid mild strong]
#
# Environment: EPOCHS (default 6) x STEPS per epoch (default 60) of training
# with BATCH images per step (default: the trainer's, 16 for tiny) and Adam
# learning rate LR (default 0.001, cosine schedule over the epochs),
# VOXEL_SCALE (default 2: coarse, quick data), SEED (default 1), THREADS
# (default 2), CASES (default: the preset's case numbers; e.g. 30,30,30 for
# less noisy held-out sets), TRAIN_SITES (default: every site; e.g. "site_1"
# for one row per preset). Writes OUT/cross_site.md (the matrices) and
# OUT/cross_site.tsv (preset, train site, eval site, WT, TC, ET). A complete
# synthesis already in OUT/data-PRESET is reused.
set -eu
FEDSEG=${FEDSEG:-build/fedseg}
OUT=${OUT:-run/cross-site}
EPOCHS=${EPOCHS:-6}
STEPS=${STEPS:-60}
BATCH=${BATCH:-16}
LR=${LR:-0.001}
VOXEL_SCALE=${VOXEL_SCALE:-2}
SEED=${SEED:-1}
THREADS=${THREADS:-2}
CASES=${CASES:-}
TRAIN_SITES=${TRAIN_SITES:-}
PRESETS=${*:-iid strong}
mkdir -p "$OUT"
TSV=$OUT/cross_site.tsv
MD=$OUT/cross_site.md
printf 'preset\ttrain_site\teval_site\twt\ttc\tet\n' > "$TSV"
{
  echo "# Cross-site matrix"
  echo
  echo "tiny trained on one site alone ($EPOCHS epochs x $STEPS steps of batch $BATCH, Adam lr $LR cosine,"
  echo "seed $SEED), scored on every site's held-out cases (fedseg eval --split val);"
  echo "synthetic data at voxel scale $VOXEL_SCALE. Whole-tumour Dice; loss = own site"
  echo "minus the mean over the other sites."
} > "$MD"

mean_of() { sed -n 's/.*"mean":{"wt":\([0-9.eE+-]*\),"tc":\([0-9.eE+-]*\),"et":\([0-9.eE+-]*\)}.*/\1 \2 \3/p'; }

for H in $PRESETS; do
  D=$OUT/data-$H
  set -- --out "$D" --heterogeneity "$H" --voxel-scale "$VOXEL_SCALE" --seed "$SEED" --threads "$THREADS" --quiet
  [ -n "$CASES" ] && set -- "$@" --cases-per-site "$CASES"
  if [ -s "$D/federation.json" ] && grep -q '"complete": true' "$D/federation.json"; then
    echo "$H: reusing $D"
  else
    "$FEDSEG" synth "$@"
  fi
  SITES=$(cd "$D" && ls -d site_* | sort -t_ -k2 -n)
  echo >> "$MD"
  echo "## $H" >> "$MD"
  echo >> "$MD"
  HDR="| trained on |"; SEP="|---|"
  for T in $SITES; do HDR="$HDR $T |"; SEP="$SEP---|"; done
  echo "$HDR own - others (WT) |" >> "$MD"
  echo "$SEP---|" >> "$MD"
  for S in ${TRAIN_SITES:-$SITES}; do
    CK=$OUT/$H-$S.ckpt
    "$FEDSEG" train --data "$D/$S" --out "$CK" --epochs "$EPOCHS" --steps "$STEPS" --batch "$BATCH" --lr "$LR" --seed "$SEED" \
      --threads "$THREADS" --quiet > "$OUT/$H-$S.train.log" 2>&1
    ROW="| $S |"; OWN=""; SUM=0; N=0
    for T in $SITES; do
      set -- $("$FEDSEG" eval --model "$CK" --data "$D/$T" --split val --json 2>/dev/null | mean_of)
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$H" "$S" "$T" "$1" "$2" "$3" >> "$TSV"
      ROW="$ROW $(printf '%.3f' "$1") |"
      if [ "$T" = "$S" ]; then OWN=$1; else SUM=$(echo "$SUM + $1" | bc -l); N=$((N + 1)); fi
    done
    LOSS=$(echo "$OWN - $SUM / $N" | bc -l)
    echo "$ROW $(printf '%.3f' "$LOSS") |" >> "$MD"
    echo "$H: trained on $S: own $OWN, loss on the others $(printf '%.3f' "$LOSS")"
  done
done
echo "wrote $MD and $TSV"
