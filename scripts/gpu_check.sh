#!/usr/bin/env bash
# GPU check: run on a machine with an NVIDIA GPU, torch 2.11.0+cu130 under
# /opt/torch/.venv, no MPI and no network, using binaries built elsewhere and
# carried there (target/release/fedhex and the flow/model test binaries).
#
#   build here:  make build && cargo test --release --no-run
#   carry:       target/release/fedhex, target/release/deps/{flow,model_io}-*
#   run there:   bash scripts/gpu_check.sh   (or via `make gpu-check` on a GPU box with the venv)
#
# The binaries' rpath points at the build machine's venv; on the GPU machine
# libtorch is found through TORCH_LIB (default: the /opt/torch venv).
set -uo pipefail
cd "$(dirname "$0")/.."
TORCH_LIB=${TORCH_LIB:-$(ls -d /opt/torch/.venv/lib/python3*/site-packages/torch/lib 2>/dev/null | head -1)}
if [ -n "$TORCH_LIB" ]; then export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
BIN=${FEDHEX_BIN:-target/release/fedhex}
status=0
echo "== doctor"; "$BIN" doctor || status=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
echo "== flow and model tests on CUDA"
for t in target/release/deps/flow-* target/release/deps/model_io-*; do
  [ -x "$t" ] && [ -f "$t" ] || continue
  case "$t" in *.d) continue ;; esac
  FEDHEX_TEST_DEVICE=cuda "$t" --test-threads 1 || status=1
done
echo "== training / sampling / log-prob throughput on CUDA (reference network)"
"$BIN" bench --device cuda --threads 4 --seconds ${GPU_SECONDS:-2} \
  --batch 1024 --batch 4096 --batch 16384 --batch 65536 --batch 262144 || status=1
exit $status
