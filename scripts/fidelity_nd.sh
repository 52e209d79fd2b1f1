#!/usr/bin/env bash
# N-dimensional fidelity benchmark: the accuracy of generated events with seven
# features and three labels at parameter points that were never simulated, the
# training time to reach it, and zuko's training time on the same data.
#
#   bash scripts/fidelity_nd.sh [NAME] [--set key=value ...]      (make fidelity-nd)
#
# 1. the Φ → γω generator of src/data/phiomega_nd.rs: a 5x5x3 grid of ROOT
#    files, 8k events per point (M_Φ 1000–3000 GeV, M_ω 0.5–8.5 GeV,
#    Γ/M_Φ 0.5–4.5 %; cuts pt_g, pt_w > 50 GeV, |η| < 2.5, m_ω > 0.4 GeV), and
#    the 12 default off-grid evaluation points (`--at-default`: every label at
#    a cell centre) with 20k events each, twice (reference and an independent
#    sample for the statistical floor);
# 2. training on the grid only, `mpirun -n $RANKS` (default 2, 1 thread each),
#    with examples/phiomega_nd.toml plus the given overrides, once per seed of
#    $SEEDS (default "42 43"), timed in all; with several seeds the runs are
#    combined into one ensemble model (`fedhex ensemble`, the mixture of the
#    flows: docs/fidelity.md, "Ensembles");
# 3. `fedhex analyze` of the (ensemble) model at the evaluation points;
# 3b. the widths again from large samples (NBIG simulated events per point,
#    default 200000, against NBIG/2 generated and NBIG/2 independent simulated
#    ones; scripts/fidelity_nd_widths.py): at 20k events the width of a
#    heavy-tailed feature like Δφ is too noisy to test 5 % (docs/fidelity.md);
# 4. zuko NSF and MAF trained on the same grid files, same epochs and batch,
#    2 threads (benches/zuko_train.py), timed;
# 5. the table and the PASS/FAIL target checks (scripts/fidelity_nd_summary.py).
#
# Environment overrides (a smoke run: EPOCHS=1 NEVENTS=1000 NREF=2000 bash scripts/fidelity_nd.sh smoke):
#   EPOCHS   training epochs (default: the config's, 32)      NEVENTS  events per grid point (8000)
#   NREF     events per evaluation point (20000)             GRID     grid AxBxC (5x5x3)
#   POINTS   evaluation points "M,m,W M,m,W ..." (default: the 12 built-in ones)
#   RANKS    MPI ranks (2)       ZUKO=0 skips zuko          ZUKO_EPOCHS  zuko's epochs (EPOCHS or 8)
#   SEEDS    training seeds, one flow each ("42 43"; one seed: a single flow)
#   ZUKO_KINDS  zuko flows to time (nsf,maf)
#   NBIG     simulated events per point for the large-sample widths (200000; 0 skips them)
#   FEDHEX_BIN_DIR  where fedhex and fedhex-worker are ($CARGO_TARGET_DIR/release or target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:-default}; shift || true
BIN=${FEDHEX_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
GRID=${GRID:-5x5x3}
NEVENTS=${NEVENTS:-8000}
NREF=${NREF:-20000}
POINTS=${POINTS:-}
# The simulated data are cached per grid, event counts and evaluation points.
PKEY=""; [ -n "$POINTS" ] && PKEY=-$(echo "$POINTS" | md5sum | cut -c1-8)
DATA=${FIDELITY_DATA:-fidelity-out/nd-data-$GRID-$NEVENTS-$NREF$PKEY}
OUT=fidelity-out/nd-$NAME
RANKS=${RANKS:-2}
EPOCHS=${EPOCHS:-}
# The config's epochs (what the run trains when EPOCHS is not set).
CONFIG_EPOCHS=$(sed -n 's/^epochs *= *\([0-9]*\).*/\1/p' examples/phiomega_nd.toml)
ZUKO=${ZUKO:-1}
ZUKO_EPOCHS=${ZUKO_EPOCHS:-${EPOCHS:-$CONFIG_EPOCHS}}
PY=${FEDHEX_PYTHON:-python3}
# Seconds (one decimal) since a `date +%s%N` stamp.
seconds_since() { local ms=$(( ($(date +%s%N) - $1) / 1000000 )); echo "$((ms / 1000)).$((ms % 1000 / 100))"; }
AT=(--at-default)
if [ -n "$POINTS" ]; then AT=(); for p in $POINTS; do AT+=(--at "$p"); done; fi
if [ ! -f "$DATA/ref2.root" ]; then
  echo "== simulating the $GRID grid ($NEVENTS events per point) and the evaluation points into $DATA"
  rm -rf "$DATA" && mkdir -p "$DATA"
  start=$(date +%s%N)
  "$BIN/fedhex" gen --model phi-omega-nd --grid "$GRID" -n "$NEVENTS" --seed 1 --out "$DATA/mc"
  echo "grid ($GRID x $NEVENTS events) generated in $(seconds_since "$start") s" | tee "$DATA/gen_time.txt"
  "$BIN/fedhex" gen --model phi-omega-nd "${AT[@]}" -n "$NREF" --seed 101 --out "$DATA/ref1.root"
  "$BIN/fedhex" gen --model phi-omega-nd "${AT[@]}" -n "$NREF" --seed 202 --out "$DATA/ref2.root"
fi
NBIG=${NBIG:-200000}
if [ "$NBIG" != 0 ] && [ ! -f "$DATA/big-$NBIG-2.root" ]; then
  "$BIN/fedhex" gen --model phi-omega-nd "${AT[@]}" -n "$NBIG" --seed 303 --out "$DATA/big-$NBIG.root"
  "$BIN/fedhex" gen --model phi-omega-nd "${AT[@]}" -n "$((NBIG / 2))" --seed 404 --out "$DATA/big-$NBIG-2.root"
fi
rm -rf "$OUT" && mkdir -p "$OUT"
MPIRUN=(mpirun --oversubscribe -n "$RANKS")
[ "$(id -u)" -eq 0 ] && MPIRUN=(mpirun --allow-run-as-root --oversubscribe -n "$RANKS")
SETS=(--set "data.root.files=[\"$DATA/mc/\"]" --set 'outputs.progress=false' --set 'training.threads=1')
[ -n "$EPOCHS" ] && SETS+=(--set "training.epochs=$EPOCHS")
read -r -a SEED_LIST <<<"${SEEDS:-42 43}"
[ "${#SEED_LIST[@]}" -ge 1 ] || { echo "SEEDS is empty" >&2; exit 2; }
MEMBERS=()
start=$(date +%s%N)
for seed in "${SEED_LIST[@]}"; do
  RUN=$OUT/run; [ "${#SEED_LIST[@]}" -gt 1 ] && RUN=$OUT/run-s$seed
  echo "== training ($NAME, seed $seed) with $RANKS ranks: examples/phiomega_nd.toml ${*:-}"
  # The seed goes last so that it wins over one in the overrides.
  "${MPIRUN[@]}" "$BIN/fedhex-worker" train --config examples/phiomega_nd.toml "${SETS[@]}" \
    --set "outputs.run_dir=\"$RUN\"" "$@" --set "training.seed=$seed" >"$RUN.train.out" 2>"$RUN.train.log"
  MEMBERS+=("$RUN/model")
done
MODEL=${MEMBERS[0]}
HISTORIES=(); for m in "${MEMBERS[@]}"; do HISTORIES+=("${m%/model}/history.csv"); done
if [ "${#MEMBERS[@]}" -gt 1 ]; then
  MODEL=$OUT/model
  "$BIN/fedhex" ensemble --out "$MODEL" "${MEMBERS[@]}"
fi
train_s=$(seconds_since "$start")
echo "== analysis at the evaluation points"
"$BIN/fedhex" analyze --model "$MODEL" --reference "$DATA/ref1.root" --reference2 "$DATA/ref2.root" \
  --out "$OUT/report" >"$OUT/analyze.out" 2>&1
WIDTHS=()
if [ "$NBIG" != 0 ]; then
  echo "== widths from large samples ($NBIG simulated events per point)"
  "$BIN/fedhex" sample --model "$MODEL" --labels-from "$DATA/big-$NBIG.root" -n "$((NBIG / 2))" --seed 7 \
    --out "$OUT/big.npz" >"$OUT/big.out" 2>&1
  "$PY" scripts/fidelity_nd_widths.py "$MODEL" "$DATA/big-$NBIG.root" "$OUT/big.npz" --floor "$DATA/big-$NBIG-2.root" >"$OUT/widths.txt"
  rm -f "$OUT/big.npz"
fi
ZUKO_ARGS=()
if [ "$ZUKO" != 0 ]; then
  echo "== zuko (${ZUKO_KINDS:-nsf,maf}) on the same grid files ($ZUKO_EPOCHS epochs, 2 threads)"
  "$PY" benches/zuko_train.py --files "$DATA/mc" --epochs "$ZUKO_EPOCHS" --batch 1024 --threads 2 --kinds "${ZUKO_KINDS:-nsf,maf}" \
    --out "$OUT/zuko.json" 2>&1 | tee "$OUT/zuko.out"
  ZUKO_ARGS=(--zuko "$OUT/zuko.json")
fi
"$PY" scripts/fidelity_nd_summary.py "$OUT/report/report.json" --train-seconds "$train_s" \
  --ranks "$RANKS" --epochs "${EPOCHS:-$CONFIG_EPOCHS}" --members "${#MEMBERS[@]}" --history "${HISTORIES[@]}" "${ZUKO_ARGS[@]}" | tee "$OUT/summary.txt"
[ -f "$OUT/widths.txt" ] && tee -a "$OUT/summary.txt" <"$OUT/widths.txt"
echo "report: $OUT/report/index.html; $(cat "$DATA/gen_time.txt" 2>/dev/null || true)" | tee -a "$OUT/summary.txt"
