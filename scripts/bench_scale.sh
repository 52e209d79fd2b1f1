#!/usr/bin/env bash
# Scale-out benchmark (issue #22): a generated grid of N events (6 features,
# 3 labels, float32 .npz), trained one epoch on 1, 2 and 4 ranks of this
# machine (1-block network, batch 65536): start-up (index, read) seconds,
# peak RSS per rank and training events/s, beside the raw size of a shard.
# Usage: scripts/bench_scale.sh [N] [RANKS...]   (N default 2e7; prints the
# machine's limit when N events do not fit in memory).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000000}
shift || true
RANKS=${*:-"1 2 4"}
BIN=${FEDHEX_BIN_DIR:-target/release}
PY=${FEDHEX_PYTHON:-python3}
WORK=${BENCH_DIR:-$(mktemp -d /tmp/fedhex-scale.XXXXXX)}
mkdir -p "$WORK"
RAW=$((N * 36))
AVAIL=$(awk '/MemAvailable/ {printf "%.0f", $2 * 1024}' /proc/meminfo)
if [ "$RAW" -gt $((AVAIL / 3)) ]; then
    echo "N = $N events need $((RAW / 1048576)) MiB raw; this machine has $((AVAIL / 1048576)) MiB available:" \
         "the limit here is about $((AVAIL / 3 / 36)) events (raw size up to a third of the free memory)" >&2
    exit 2
fi
make_grid() {
    "$PY" - "$1" "$2" <<'PY'
import sys, numpy as np
path, n = sys.argv[1], int(float(sys.argv[2]))
rng = np.random.default_rng(1)
labels = np.repeat(np.stack(np.meshgrid(*[np.arange(5)] * 3, indexing="ij"), -1).reshape(-1, 3), -(-n // 125), 0)[:n]
labels = labels.astype(np.float32)
samples = np.empty((n, 6), np.float32)
for i in range(0, n, 1 << 22):
    j = min(n, i + (1 << 22))
    samples[i:j] = rng.normal(size=(j - i, 6)) + labels[i:j].sum(1, keepdims=True) * 0.2
np.savez(path, samples=samples, labels=labels)
PY
}
DATA="$WORK/grid_$N.npz"
[ -f "$DATA" ] || make_grid "$DATA" "$N"
BASE_DATA="$WORK/grid_base.npz"
[ -f "$BASE_DATA" ] || make_grid "$BASE_DATA" 65536
# train_run NAME DATA RANKS: one epoch; sets LOG and RUN.
train_run() {
    RUN="$WORK/run_$1"
    rm -rf "$RUN"
    cat > "$WORK/run_$1.toml" <<TOML
[data]
path = "$2"
validation_fraction = 0.0
[network]
n_blocks = 1
hidden = [32, 32]
[training]
epochs = 1
batch_size = 65536
device = "cpu"
[outputs]
run_dir = "$RUN"
progress = false
[control]
enabled = false
TOML
    LOG="$WORK/run_$1.log"
    mpirun --allow-run-as-root --oversubscribe --bind-to none -n "$3" "$BIN/fedhex-worker" train \
        --config "$WORK/run_$1.toml" >"$LOG" 2>&1
}
peak() { grep -o 'peak resident memory per rank (MiB): [0-9 ]*' "$LOG" | sed 's/.*: //'; }
train_run base "$BASE_DATA" 1
BASE=$(peak | awk '{print $1}')
echo "base: one batch of 65536 events on 1 rank, peak RSS $BASE MiB (libtorch, the network, one batch's buffers)"
echo
echo "| ranks | events | raw per rank (MiB) | index (s) | read (s) | peak RSS per rank (MiB) | above base / raw | train ev/s |"
echo "|---|---|---|---|---|---|---|---|"
for R in $RANKS; do
    train_run "$R" "$DATA" "$R"
    idx=$(grep -o 'index_seconds="*[0-9.]*' "$LOG" | grep -o '[0-9.]*$' | sort -n | tail -1)
    rd=$(grep -o 'read_seconds="*[0-9.]*' "$LOG" | grep -o '[0-9.]*$' | sort -n | tail -1)
    rss=$(peak)
    top=$(echo "$rss" | tr ' ' '\n' | sort -n | tail -1)
    ratio=$(awk -v t="$top" -v b="$BASE" -v r="$RAW" -v n="$R" 'BEGIN {printf "%.2f", (t - b) * 1048576 / (r / n)}')
    evs=$(awk -F, 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == "events_per_s") c = i} NR == 2 {printf "%.0f", $c}' "$RUN/history.csv")
    echo "| $R | $N | $((RAW / R / 1048576)) | $idx | $rd | $rss | $ratio | $evs |"
done
