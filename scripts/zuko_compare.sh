#!/usr/bin/env bash
# Side-by-side throughput of FEDHEX and zuko (reference network: 10 MAF blocks,
# hidden [128], 2 features, 2 labels) on this machine, same threads and batch.
# Prints both and the FEDHEX/zuko ratios. Run via `make zuko-compare`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${FEDHEX_PYTHON:-python3}
BIN=${FEDHEX_BIN:-target/release/fedhex}
SECONDS_PER=${SECONDS_PER:-3}
for cfg in "1 1024" "2 8192"; do
  set -- $cfg
  f=$("$BIN" bench --json --threads "$1" --batch "$2" --seconds "$SECONDS_PER")
  z=$("$PY" benches/zuko_bench.py --threads "$1" --batch "$2" --seconds "$SECONDS_PER")
  "$PY" - "$f" "$z" <<'PY'
import json, sys
f, z = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"threads {f['threads']}, batch {f['batch']}:")
for k, name in [("train_events_per_s", "train"), ("sample_events_per_s", "sample"), ("log_prob_events_per_s", "log-prob")]:
    print(f"  {name:9s} fedhex {f[k]:>12,.0f} ev/s   {z['impl']} {z[k]:>12,.0f} ev/s   ratio {f[k] / z[k]:.2f}x")
print(f"  fedhex peak RSS {f['peak_rss_mib']:.0f} MiB")
PY
done
