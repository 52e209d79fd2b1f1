#!/usr/bin/env bash
# Training events/s of a 2-rank job with and without 4 active watchers
# (`fedhex-ctl watch`), to show the control plane does not slow training.
# Usage: bash scripts/bench_control.sh [epochs]
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-4}
BIN=target/release
W=$(mktemp -d /tmp/fedhex-bench-ctl.XXXX)
trap 'rm -rf "$W"' EXIT
"$BIN/fedhex" gen --layout grid2d --points 10 -n 2000 --out "$W/grid.npz" >/dev/null
cat > "$W/run.toml" <<TOML
[data]
path = "$W/grid.npz"
[training]
epochs = $EPOCHS
batch_size = 1024
threads = 1
device = "cpu"
[outputs]
checkpoint_every = 0
progress = false
TOML
for watchers in 0 4; do
  run="$W/run$watchers"
  mpirun --allow-run-as-root --oversubscribe -n 2 "$BIN/fedhex-worker" train --config "$W/run.toml" \
    --set "outputs.run_dir=\"$run\"" >/dev/null 2>&1 &
  job=$!
  if [ "$watchers" -gt 0 ]; then
    until [ -f "$run/control.json" ]; do sleep 0.1; done
    for i in $(seq "$watchers"); do "$BIN/fedhex-ctl" --run "$run" watch --rate 50 >/dev/null 2>&1 & done
  fi
  wait $job
  eps=$(tail -n +2 "$run/history.csv" | cut -d, -f6 | sort -n | tail -n 1)
  echo "$watchers watchers: best epoch $eps events/s"
done
wait
