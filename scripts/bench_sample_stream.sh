#!/usr/bin/env bash
# Streamed generation benchmark: 1,000,000 and 10,000,000 events at one label
# to .root and .npz, events/s and peak resident memory (VmHWM) per case, each
# case in its own process (examples/bench_sample_stream.rs). Nothing is trained.
#
#   bash scripts/bench_sample_stream.sh [DEVICE [CHUNK [NET]]]
#   DEVICE: cpu (default), cuda, cuda:N; CHUNK: events per written chunk (2^20);
#   NET: small (2 blocks of 16, default) or reference (10 blocks of 128: use a GPU).
#
# The peak should stay flat from 1M to 10M events: memory is bounded by CHUNK.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example bench_sample_stream
exec target/release/examples/bench_sample_stream - "${1:-cpu}" "${2:-1048576}" "${3:-small}"
