#!/usr/bin/env bash
# The main job, end to end (called by `make demo` after set-up and build):
#  1. a quick Gaussian check: train on a 5x5 grid whose covariance rotates with
#     the label, sample at an off-grid label, compare with the true moments;
#  2. the physics story: a 10x10 grid of ROOT files from the Φ → γω
#     pseudo-detector → training under `mpirun -n 2` with three grid points held
#     out → generation there → `fedhex analyze` against independent simulation
#     → an HTML report, and the held-out (interpolation) accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
OUT=demo-out
EPOCHS=${DEMO_EPOCHS:-8}
rm -rf "$OUT" && mkdir -p "$OUT"
MPIRUN=(mpirun --oversubscribe -n 2)
[ "$(id -u)" -eq 0 ] && MPIRUN=(mpirun --allow-run-as-root --oversubscribe -n 2)

echo "== Gaussian check: 5x5 grid, rotating covariance, off-grid label (0.55, 0.45)"
"$BIN/fedhex" gen --layout grid2d --points 5 --cov rotating --sigma 0.06 --shape 0.4 --turns 0.5 -n 2000 --seed 1 --out "$OUT/grid.npz"
"$BIN/fedhex" train --config examples/gaussian.toml --set 'outputs.progress=false' 2>/dev/null
"$BIN/fedhex" sample --model "$OUT/run/model" --label 0.55,0.45 -n 20000 --seed 7 --out "$OUT/generated.npz"
"$BIN/fedhex" moments --truth "$OUT/grid.gen.json" --samples "$OUT/generated.npz"

echo
echo "== Physics: 10x10 grid of ROOT files (Φ → γω pseudo-detector, 4000 events per point)"
"$BIN/fedhex" gen --model phi-omega --grid 10x10 -n 4000 --seed 1 --out "$OUT/mc"
HOLDOUT='[[1750.0, 3.5], [2500.0, 6.5], [1250.0, 1.5]]'
echo "== Training under mpirun -n 2, $EPOCHS epochs, holding out $HOLDOUT"
start=$(date +%s)
"${MPIRUN[@]}" "$BIN/fedhex-worker" train --config examples/phiomega.toml \
  --set "data.root.files=[\"$OUT/mc/\"]" --set "data.holdout_labels=$HOLDOUT" \
  --set "training.epochs=$EPOCHS" --set "outputs.run_dir=\"$OUT/phiomega\"" --set 'outputs.progress=false' \
  2> "$OUT/train.log" | tail -n 2
echo "   training took $(( $(date +%s) - start )) s (log: $OUT/train.log)"
echo "== Independent simulation at the held-out points (two samples: reference and statistical floor)"
AT=(--at 1750,3.5 --at 2500,6.5 --at 1250,1.5)
"$BIN/fedhex" gen --model phi-omega "${AT[@]}" -n 20000 --seed 101 --out "$OUT/reference.root"
"$BIN/fedhex" gen --model phi-omega "${AT[@]}" -n 20000 --seed 202 --out "$OUT/reference2.root"
echo "== Generation at the held-out points and analysis"
"$BIN/fedhex" analyze --model "$OUT/phiomega/model" --reference "$OUT/reference.root" \
  --reference2 "$OUT/reference2.root" --out "$OUT/report" 2>/dev/null | tail -n 6
echo
echo "demo done: report at $OUT/report/index.html (open it in a browser); model at $OUT/phiomega/model"
