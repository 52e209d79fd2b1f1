#!/usr/bin/env bash
# What the stall watchdog costs a 2-rank job: training events/s with the
# watchdog thread off (control plane off, no step timeout: only the progress
# marks around each collective remain) and on (control plane with its stall
# report, `training.step_timeout`, heartbeat files), alternating REPEATS
# times (default 5) on a network small enough that a per-step cost would show
# (2 affine blocks of [16], batch 64: steps of tens of microseconds).
# Prints the best epoch's events/s of each run and the median on/off ratio.
# Usage: bash scripts/bench_stall.sh [epochs]   (binaries from FEDHEX_BIN_DIR, default target/release;
# on a machine shared with other work, NICE="nice -n -15" as root steadies the figures)
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-30}
BIN=${FEDHEX_BIN_DIR:-target/release}
W=$(mktemp -d /tmp/fedhex-bench-stall.XXXX)
trap 'rm -rf "$W"' EXIT
"$BIN/fedhex" gen --layout grid2d --points 10 -n 300 --out "$W/grid.npz" >/dev/null
cat > "$W/run.toml" <<TOML
[data]
path = "$W/grid.npz"
[network]
n_blocks = 2
hidden = [16]
transform = "affine"
permutation = "reverse"
[training]
epochs = $EPOCHS
batch_size = 64
threads = 1
device = "cpu"
[outputs]
checkpoint_every = 0
progress = false
TOML
REPEATS=${REPEATS:-5}
ratios=()
for i in $(seq 1 "$REPEATS"); do
  for mode in off on; do
    if [ "$mode" = off ]; then
      sets=(--set control.enabled=false)
    else
      sets=(--set control.enabled=true --set training.step_timeout=60)
    fi
    ${NICE:-} mpirun --allow-run-as-root --oversubscribe --bind-to none -n 2 "$BIN/fedhex-worker" train --config "$W/run.toml" \
      --set "outputs.run_dir=\"$W/$mode-$i\"" "${sets[@]}" >/dev/null 2>&1
    eps=$(tail -n +2 "$W/$mode-$i/history.csv" | cut -d, -f6 | sort -n | tail -n 1)
    echo "$eps" > "$W/eps-$mode"
    echo "watchdog $mode, run $i: best epoch $eps events/s"
  done
  ratios+=("$(awk "BEGIN{printf \"%.3f\", $(cat "$W/eps-on")/$(cat "$W/eps-off")}")")
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
echo "on/off events/s ratios: ${ratios[*]}; median $median"
