#!/usr/bin/env bash
# Training throughput for 1 and 2 ranks (1 thread each) on the reference
# network and a 10x10 grid with 10k events per label (1M events); prints the
# 2-rank/1-rank ratio, the time per step in the gradient all-reduce and the
# peak resident memory per rank, and each rank's step time per local event (a
# rank on a slower core shows up there; on a shared VM a core's speed changes
# over minutes, so the 1-rank and 2-rank runs alternate REPEATS times, default 3,
# and the median of the pairs' ratios is printed last).
# Usage: bash scripts/bench_mpi.sh [events_per_label] [epochs]
# (binaries from FEDHEX_BIN_DIR, default target/release; TRANSFORM=affine_spline
# PERMUTATION=lu for the default network instead of the reference one;
# BATCH_STRATA=0 for batches with an even share of each rank's shard)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
EPOCHS=${2:-2}
BIN=${FEDHEX_BIN_DIR:-target/release}
W=$(mktemp -d /tmp/fedhex-bench-mpi.XXXX)
trap 'rm -rf "$W"' EXIT
"$BIN/fedhex" gen --layout grid2d --points 10 -n "$N" --cov rotating --sigma 0.05 --shape 0.4 --out "$W/grid.npz" >/dev/null
cat > "$W/run.toml" <<TOML
[data]
path = "$W/grid.npz"
[network]
n_blocks = 10
hidden = [128]
transform = "${TRANSFORM:-affine}"
permutation = "${PERMUTATION:-reverse}"
[training]
epochs = $EPOCHS
batch_size = 1024
batch_strata = ${BATCH_STRATA:-1}
threads = 1
device = "cpu"
[outputs]
checkpoint_every = 0
progress = false
TOML
REPEATS=${REPEATS:-3}
steps=$(( (N * 100 * 9 / 10 + 1023) / 1024 ))
ratios=()
for i in $(seq 1 "$REPEATS"); do
  for n in 1 2; do
    out=$(mpirun --allow-run-as-root --oversubscribe -n $n "$BIN/fedhex-worker" train --config "$W/run.toml" \
          --set "outputs.run_dir=\"$W/run$n-$i\"" 2>/dev/null)
    last=$(tail -n 1 "$W/run$n-$i/history.csv")
    eps=$(echo "$last" | cut -d, -f6); ar=$(echo "$last" | cut -d, -f7)
    busy=$(echo "$out" | sed -n 's/^step time per local event per rank (us, before the all-reduce): //p')
    echo "$n rank(s): $eps events/s (last epoch); allreduce $(awk "BEGIN{printf \"%.3f\", 1000*$ar/$steps}") ms/step; step us/event per rank: $busy; $(echo "$out" | grep 'peak resident')"
    echo "$eps" > "$W/eps$n"
  done
  r=$(awk "BEGIN{printf \"%.2f\", $(cat "$W/eps2")/$(cat "$W/eps1")}")
  echo "  pair $i: 2-rank / 1-rank throughput $r"
  ratios+=("$r")
done
echo "2-rank / 1-rank throughput: median $(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}') of ${ratios[*]}"
