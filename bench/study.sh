#!/bin/sh
# bench/study.sh — the non-IID study: on the `strong` heterogeneity preset,
# centralised (pooled) training, local-only training at each site, and the
# federated algorithms FedAvg, FedProx, FedAdam, SCAFFOLD and FedBN +
# personalisation, all with the same budget of training steps, scored on
# every site's held-out cases (`fedseg eval --split val`, native grid).
#
#   FEDSEG=build/fedseg OUT=run/study sh bench/study.sh
#
# Budget (environment): ROUNDS (16) federated rounds x LOCAL_EPOCHS (1) x STEPS
# (40) steps of batch 16 at each of the 3 sites. (With 8 rounds the federated
# models are still in the phase where tiny predicts no tumour at all; see
# docs/results_study.md.) Centralised: ROUNDS x
# LOCAL_EPOCHS epochs of 3 x STEPS steps on the pooled sites (the same number
# of steps as the whole federation); local-only: ROUNDS x LOCAL_EPOCHS epochs
# of STEPS steps on one site (what that site trains in the federation). Adam,
# lr 0.001, constant (as every federated round uses). FedProx mu = MU (0.01);
# FedAdam server_lr = SERVER_LR (0.01, beta1 0.9, beta2 0.99, tau 1e-3);
# FedBN's sites then fine-tune FINETUNE (1) local epoch(s). Data: VOXEL_SCALE
# (2) and SEED (1), or DATA=DIR (site_* folders) to reuse a synthesis.
#
# Writes OUT/study.tsv (method, site, WT, TC, ET), OUT/rounds.tsv (method,
# round, mean Dice WT of the global model the sites received), the plots
# OUT/dice_rounds.png and OUT/site_bars.png (gnuplot), and OUT/results_study.md
# (tables; the caller copies it to docs/). Every number comes from this run.
# PLOT_ONLY=1 redraws the tables and plots from an earlier run's OUT.
set -eu
FEDSEG=${FEDSEG:-build/fedseg}
OUT=${OUT:-run/study}
ROUNDS=${ROUNDS:-16}
LOCAL_EPOCHS=${LOCAL_EPOCHS:-1}
STEPS=${STEPS:-40}
MU=${MU:-0.01}
SERVER_LR=${SERVER_LR:-0.01}
FINETUNE=${FINETUNE:-1}
VOXEL_SCALE=${VOXEL_SCALE:-2}
SEED=${SEED:-1}
THREADS=${THREADS:-2}
case $FEDSEG in /*) ;; *) FEDSEG=$(pwd)/$FEDSEG ;; esac
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
T0=$(date +%s)
log() { echo "[study $(( $(date +%s) - T0 )) s] $*"; }

if [ -n "${DATA:-}" ]; then D=$DATA; else
  D=$OUT/data
  log "synthesizing the strong preset"
  "$FEDSEG" synth --out "$D" --heterogeneity strong --voxel-scale "$VOXEL_SCALE" --seed "$SEED" \
    --threads "$THREADS" --quiet
fi
SITES=$(cd "$D" && ls -d site_* | sort -t_ -k2 -n)
NS=$(echo $SITES | wc -w)
EP=$((ROUNDS * LOCAL_EPOCHS))
TSV=$OUT/study.tsv
RTSV=$OUT/rounds.tsv
if [ -z "${PLOT_ONLY:-}" ]; then
printf 'method\tsite\twt\ttc\tet\n' > "$TSV"
printf 'method\tround\tmean_wt\n' > "$RTSV"
: > "$OUT/bytes.tsv"

mean_of() { sed -n 's/.*"mean":{"wt":\([0-9.eE+-]*\),"tc":\([0-9.eE+-]*\),"et":\([0-9.eE+-]*\)}.*/\1 \2 \3/p'; }
score() { # score METHOD SITE CKPT
  set -- "$1" "$2" $("$FEDSEG" eval --model "$3" --data "$D/$2" --split val --json 2>/dev/null | mean_of)
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$TSV"
}

# centralised: the pooled sites, the federation's total number of steps
POOL=$(for S in $SITES; do printf '%s,' "$D/$S"; done | sed 's/,$//')
log "centralised: $EP epochs x $((NS * STEPS)) steps on the pooled sites"
"$FEDSEG" train --data "$POOL" --epochs "$EP" --steps $((NS * STEPS)) --schedule constant --seed "$SEED" \
  --threads "$THREADS" --quiet --out "$OUT/central.ckpt" > "$OUT/central.log" 2>&1
for S in $SITES; do score centralised "$S" "$OUT/central.ckpt"; done
echo "centralised 0" >> "$OUT/bytes.tsv"

# local-only: each site alone, the steps it trains in the federation
for S in $SITES; do
  log "local-only $S: $EP epochs x $STEPS steps"
  "$FEDSEG" train --data "$D/$S" --epochs "$EP" --steps "$STEPS" --schedule constant --seed "$SEED" \
    --threads "$THREADS" --quiet --out "$OUT/local-$S.ckpt" > "$OUT/local-$S.log" 2>&1
  score local-only "$S" "$OUT/local-$S.ckpt"
done
echo "local-only 0" >> "$OUT/bytes.tsv"

# the federations
for A in fedavg fedprox fedadam scaffold fedbn; do
  set -- --data "$D" --rounds "$ROUNDS" --local-epochs "$LOCAL_EPOCHS" --steps "$STEPS" --device cpu \
    --seed "$SEED" --algorithm "$A" --out "$OUT/sim-$A"
  [ "$A" = fedprox ] && set -- "$@" --mu "$MU"
  [ "$A" = fedadam ] && set -- "$@" --server-lr "$SERVER_LR"
  [ "$A" = fedbn ] && set -- "$@" --finetune-epochs "$FINETUNE"
  rm -rf "$OUT/sim-$A"
  log "federated $A: $ROUNDS rounds x $LOCAL_EPOCHS x $STEPS steps per site"
  "$FEDSEG" sim "$@" > "$OUT/sim-$A.log" 2>&1
  R=$OUT/sim-$A
  for S in $SITES; do
    if [ "$A" = fedbn ]; then
      # the site's model: the global one with its own normalisation parameters
      score fedbn "$S" "$R/state/$S/final.ckpt"
      score fedbn+personal "$S" "$R/state/$S/personal.ckpt"
    else
      score "$A" "$S" "$R/final.ckpt"
    fi
  done
  B=$(grep -o '"bytes_received":[0-9]*\|"bytes_sent":[0-9]*' "$R/metrics.jsonl" | cut -d: -f2 | awk '{s+=$1} END {print s+0}')
  echo "$A $B" >> "$OUT/bytes.tsv"
  [ "$A" = fedbn ] && echo "fedbn+personal $B" >> "$OUT/bytes.tsv"
  # mean Dice WT of the global model the sites received, per round
  sed -n 's/^{"round":\([0-9]*\),.*/\1/p' "$R/metrics.jsonl" | while read -r RN; do
    M=$(grep "^{\"round\":$RN," "$R/metrics.jsonl" | grep -o '"global_dice_wt":[0-9.eE+-]*' | cut -d: -f2 |
        awk '{s+=$1; n++} END {if (n) printf "%.4f", s/n}')
    printf '%s\t%s\t%s\n' "$A" "$RN" "$M" >> "$RTSV"
  done
done
log "all runs done"
fi

# ---- tables ---------------------------------------------------------------
MD=$OUT/results_study.md
{
  echo "| method | $(for S in $SITES; do printf '%s WT / TC / ET | ' "$S"; done)mean WT | MB moved |"
  echo "|---|$(for S in $SITES; do printf -- '---|'; done)---|---|"
  for M in centralised local-only fedavg fedprox fedadam scaffold fedbn fedbn+personal; do
    ROW="| $M |"
    for S in $SITES; do
      ROW="$ROW $(awk -F'\t' -v m="$M" -v s="$S" '$1==m && $2==s {printf "%.3f / %.3f / %.3f", $3, $4, $5}' "$TSV") |"
    done
    MW=$(awk -F'\t' -v m="$M" '$1==m {s+=$3; n++} END {if (n) printf "%.3f", s/n}' "$TSV")
    MB=$(awk -v m="$M" '$1==m {printf "%.1f", $2/1e6}' "$OUT/bytes.tsv")
    echo "$ROW $MW | $MB |"
  done
} > "$MD"

# ---- plots ----------------------------------------------------------------
if command -v gnuplot >/dev/null 2>&1; then
  for A in fedavg fedprox fedadam scaffold fedbn; do
    awk -F'\t' -v a="$A" '$1==a {print $2, $3}' "$RTSV" > "$OUT/rounds-$A.dat"
  done
  gnuplot <<GP > "$OUT/gnuplot.log" 2>&1 || true
set terminal png size 900,520 noenhanced
set output "$OUT/dice_rounds.png"
set title "Whole-tumour Dice of the global model each round (mean over the sites' held-out cases), strong preset"
set xlabel "round (the model received at the start of the round)"
set ylabel "Dice WT"
set key bottom right
set grid
plot for [a in "fedavg fedprox fedadam scaffold fedbn"] "$OUT/rounds-".a.".dat" using 1:2 with linespoints title a
GP
  awk -F'\t' 'NR > 1 {print $1, $2, $3}' "$TSV" > "$OUT/bars.dat"
  for S in $SITES; do
    for M in centralised local-only fedavg fedprox fedadam scaffold fedbn fedbn+personal; do
      awk -v m="$M" -v s="$S" '$1==m && $2==s {print $3}' "$OUT/bars.dat"
    done > "$OUT/bars-$S.dat"
  done
  paste $(for S in $SITES; do printf '%s ' "$OUT/bars-$S.dat"; done) > "$OUT/bars-all.dat"
  printf 'centralised\nlocal-only\nfedavg\nfedprox\nfedadam\nscaffold\nfedbn\nfedbn+personal\n' > "$OUT/methods.txt"
  paste "$OUT/methods.txt" "$OUT/bars-all.dat" > "$OUT/bars-table.dat"
  NCOL=$((NS + 1))
  SITELIST=$(echo $SITES)
  gnuplot <<GP >> "$OUT/gnuplot.log" 2>&1 || true
set terminal png size 1000,520 noenhanced
set output "$OUT/site_bars.png"
set title "Held-out whole-tumour Dice per site and method, strong preset"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel "Dice WT"
set yrange [0:1]
set xtics rotate by -30
set key top right
set grid ytics
plot for [c=2:$NCOL] "$OUT/bars-table.dat" using c:xtic(1) title word("$SITELIST", c-1)
GP
fi
log "wrote $MD, $TSV, $RTSV and the plots in $OUT"
