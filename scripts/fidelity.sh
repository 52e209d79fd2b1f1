#!/usr/bin/env bash
# Fidelity benchmark (issue #8): the accuracy of generated events at parameter
# points that were never simulated, and the training time to reach it.
#
#   bash scripts/fidelity.sh [NAME] [--set key=value ...]      (make fidelity)
#
# 1. the physics-like Φ → γω pseudo-detector: a 10x10 grid of ROOT files,
#    10k events per point (M_Φ 1000–3250 GeV, M_ω 0.5–9.5 GeV, acceptance cut
#    m_ω > 0.415 GeV), and 13 off-grid evaluation points (the M_ω = 1 GeV row
#    next to the cut included) with 20k simulated events each, twice
#    (reference and an independent sample for the statistical floor);
# 2. training on the grid only, `mpirun -n $RANKS` (default 2, 1 thread each),
#    with examples/phiomega.toml plus the given overrides, timed;
# 3. `fedhex analyze` at the 13 points and a table: per point the worst
#    feature's |Δμ|/μ, |Δσ|/σ, χ²/ndf and the classifier AUC, beside the floor.
# Goal (issue #8): |Δμ|/μ ≤ 1 %, |Δσ|/σ ≤ 5 % everywhere, median AUC ≤ 0.52, none above 0.55.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:-default}; shift || true
BIN=target/release
DATA=${FIDELITY_DATA:-fidelity-out/data}
OUT=fidelity-out/$NAME
RANKS=${RANKS:-2}
EPOCHS=${EPOCHS:-}
POINTS="1125,1.0 2125,1.0 3125,1.0 1625,2.0 2625,2.0 1375,3.0 2875,4.0 1875,5.0 1125,6.0 2375,6.0 3125,7.0 1625,8.0 2625,9.0"
AT=(); for p in $POINTS; do AT+=(--at "$p"); done
if [ ! -f "$DATA/ref2.root" ]; then
  echo "== simulating the grid and the evaluation points into $DATA"
  rm -rf "$DATA" && mkdir -p "$DATA"
  "$BIN/fedhex" gen --model phi-omega --grid 10x10 -n 10000 --seed 1 --out "$DATA/mc"
  "$BIN/fedhex" gen --model phi-omega "${AT[@]}" -n 20000 --seed 101 --out "$DATA/ref1.root"
  "$BIN/fedhex" gen --model phi-omega "${AT[@]}" -n 20000 --seed 202 --out "$DATA/ref2.root"
fi
rm -rf "$OUT" && mkdir -p "$OUT"
MPIRUN=(mpirun --oversubscribe -n "$RANKS")
[ "$(id -u)" -eq 0 ] && MPIRUN=(mpirun --allow-run-as-root --oversubscribe -n "$RANKS")
SETS=(--set "data.root.files=[\"$DATA/mc/\"]" --set "outputs.run_dir=\"$OUT/run\"" --set 'outputs.progress=false' --set 'training.threads=1')
[ -n "$EPOCHS" ] && SETS+=(--set "training.epochs=$EPOCHS")
echo "== training ($NAME) with $RANKS ranks: examples/phiomega.toml $*"
start=$(date +%s)
"${MPIRUN[@]}" "$BIN/fedhex-worker" train --config examples/phiomega.toml "${SETS[@]}" "$@" >"$OUT/train.out" 2>"$OUT/train.log"
train_s=$(( $(date +%s) - start ))
echo "== analysis at the 13 evaluation points"
"$BIN/fedhex" analyze --model "$OUT/run/model" --reference "$DATA/ref1.root" --reference2 "$DATA/ref2.root" \
  --out "$OUT/report" >"$OUT/analyze.out" 2>&1
PY=${FEDHEX_PYTHON:-python3}
"$PY" scripts/fidelity_summary.py "$OUT/report/report.json" | tee "$OUT/summary.txt"
echo "training time: $train_s s ($RANKS ranks on $(nproc) cores); report: $OUT/report/index.html" | tee -a "$OUT/summary.txt"
