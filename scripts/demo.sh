#!/usr/bin/env bash
# The Gaussian demo, end to end (called by `make demo` after set-up and build):
# generate a 5x5 grid of labels whose covariance rotates with the label, train
# a small flow on 2 cores, sample at the off-grid label (0.55, 0.45), and
# compare the generated mean and covariance with the generator's truth there.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/fedhex
OUT=demo-out
mkdir -p "$OUT"
echo "== 1/4 generate: 5x5 grid in [0,1]^2, 2000 events per label, rotating covariance"
"$BIN" gen --layout grid2d --points 5 --cov rotating --sigma 0.06 --shape 0.4 --turns 0.5 -n 2000 --seed 1 --out "$OUT/grid.npz"
echo "== 2/4 train (examples/gaussian.toml)"
start=$(date +%s)
"$BIN" train --config examples/gaussian.toml
echo "   training took $(( $(date +%s) - start )) s; loss history in $OUT/run/history.csv"
echo "== 3/4 sample 20000 events at the off-grid label (0.55, 0.45) and at the grid point (0.5, 0.5)"
"$BIN" sample --model "$OUT/run/model" --label 0.55,0.45 --label 0.5,0.5 -n 20000 --seed 7 --out "$OUT/generated.npz"
echo "== 4/4 generated vs. true moments"
"$BIN" moments --truth "$OUT/grid.gen.json" --samples "$OUT/generated.npz"
echo "demo done: model in $OUT/run/model, events in $OUT/generated.npz"
