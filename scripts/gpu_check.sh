#!/usr/bin/env bash
# GPU check: run on a machine with an NVIDIA GPU, torch 2.11.0+cu130 under
# /opt/torch/.venv, no MPI and no network, using binaries built elsewhere and
# carried there.
#
#   build here:  make build && cargo test --release --no-run
#   carry:       the fedhex binary and the flow/model_io test binaries
#                (FEDHEX_BIN, FEDHEX_TESTS: space-separated paths), optionally a
#                zuko wheel in GPU_WHEELS (a folder) for the side-by-side figure
#   run there:   bash scripts/gpu_check.sh   (or `make gpu-check` on a GPU box)
#
# Prints: doctor, the flow/model tests on CUDA, training / sampling / log-prob
# events/s over batch sizes 256 … 262144 (FEDHEX, then zuko on the same GPU),
# the per-step time at the smallest batch (≈ launch and host overhead, since
# the arithmetic there is negligible) against the largest, and the peak GPU
# memory seen by nvidia-smi while the benches ran.
#
# The binaries' rpath points at the build machine's venv; on the GPU machine
# libtorch is found through TORCH_LIB (default: the /opt/torch venv).
set -uo pipefail
cd "$(dirname "$0")/.."
TORCH_LIB=${TORCH_LIB:-$(ls -d /opt/torch/.venv/lib/python3*/site-packages/torch/lib 2>/dev/null | head -1)}
if [ -n "$TORCH_LIB" ]; then export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
BIN=${FEDHEX_BIN:-target/release/fedhex}
TESTS=${FEDHEX_TESTS:-$(ls target/release/deps/flow-* target/release/deps/model_io-* 2>/dev/null | grep -v '\.d$')}
PY=${GPU_PYTHON:-$(command -v python3)}
SECONDS_PER=${GPU_SECONDS:-1.5}
BATCHES=${GPU_BATCHES:-"256 1024 4096 16384 65536 262144"}
DEV=${GPU_DEVICE:-cuda}   # GPU_DEVICE=cpu for a dry run of this script without a GPU
OUTDIR=${OUT:-/tmp/fedhex-gpu-check}
mkdir -p "$OUTDIR"
status=0

echo "== doctor"
"$BIN" doctor || status=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

echo "== flow and model tests on CUDA"
for t in $TESTS; do
  [ -x "$t" ] && [ -f "$t" ] || continue
  echo "-- $t"
  FEDHEX_TEST_DEVICE=$DEV "$t" --test-threads 1 2>&1 | grep -E "^test result|FAILED|panicked|failed" || true
  FEDHEX_TEST_DEVICE=$DEV "$t" --test-threads 1 >/dev/null 2>&1 || { echo "   FAILED: $t"; status=1; }
done

# Peak GPU memory while the benches run (MiB, whole device; nothing else runs there).
mem_log="$OUTDIR/gpu_mem.csv"
( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null; sleep 0.2; done ) >"$mem_log" &
mem_pid=$!

echo "== FEDHEX on CUDA: reference network (10 MADE blocks, hidden [128], 2 features, 2 labels)"
bargs=""; for b in $BATCHES; do bargs="$bargs --batch $b"; done
"$BIN" bench --device "$DEV" --threads 4 --seconds "$SECONDS_PER" $bargs --json | tee "$OUTDIR/fedhex_cuda.jsonl" || status=1
fedhex_peak=$(sort -n "$mem_log" | tail -1)
echo "peak GPU memory during FEDHEX benches: ${fedhex_peak:-?} MiB"

echo "== FEDHEX on CUDA: default network (affine+spline blocks, learned LU mixing)"
: >"$mem_log"
"$BIN" bench --device "$DEV" --threads 4 --seconds "$SECONDS_PER" $bargs --transform affine_spline --permutation lu --json \
  | tee "$OUTDIR/fedhex_cuda_default.jsonl" || status=1
echo "peak GPU memory during the default network's benches: $(sort -n "$mem_log" | tail -1) MiB"

if [ -n "${GPU_WHEELS:-}" ] && ls "$GPU_WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu-site "$GPU_WHEELS"/*.whl \
    && export PYTHONPATH=/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}
fi
if "$PY" -c "import zuko" 2>/dev/null; then
  echo "== zuko on the same GPU"
  : >"$mem_log"
  zargs=""; for b in $BATCHES; do zargs="$zargs --batch $b"; done
  "$PY" benches/zuko_bench.py --device "$DEV" --threads 4 --seconds "$SECONDS_PER" $zargs | tee "$OUTDIR/zuko_cuda.jsonl" || true
  echo "peak GPU memory during zuko benches: $(sort -n "$mem_log" | tail -1) MiB"
fi
kill "$mem_pid" 2>/dev/null

echo "== summary"
for net in reference default; do
f="$OUTDIR/fedhex_cuda.jsonl"; [ "$net" = default ] && f="$OUTDIR/fedhex_cuda_default.jsonl"
echo "-- $net network (zuko columns: zuko's reference-shaped flow)"
"$PY" - "$f" "$OUTDIR/zuko_cuda.jsonl" <<'EOF'
import json, sys, os
def load(p):
    if not os.path.exists(p):
        return {}
    out = {}
    for line in open(p):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            out[r["batch"]] = r
    return out
f, z = load(sys.argv[1]), load(sys.argv[2])
print(f"{'batch':>8} {'train M/s':>10} {'sample M/s':>11} {'logp M/s':>9} {'step ms':>8} | {'zuko train':>10} {'zuko sample':>11} {'zuko logp':>9}")
for b in sorted(f):
    r = f[b]; q = z.get(b, {})
    step_ms = 1e3 * b / r["train_events_per_s"]
    zt = q.get("train_events_per_s", float("nan")) / 1e6
    zs = q.get("sample_events_per_s", float("nan")) / 1e6
    zl = q.get("log_prob_events_per_s", float("nan")) / 1e6
    print(f"{b:>8} {r['train_events_per_s']/1e6:>10.3f} {r['sample_events_per_s']/1e6:>11.3f} {r['log_prob_events_per_s']/1e6:>9.3f} {step_ms:>8.3f} | {zt:>10.3f} {zs:>11.3f} {zl:>9.3f}")
if f:
    small, large = min(f), max(f)
    t_small = small / f[small]["train_events_per_s"]
    t_large = large / f[large]["train_events_per_s"]
    print(f"training step at batch {small}: {1e3*t_small:.3f} ms (launch/host overhead, arithmetic negligible); "
          f"at batch {large}: {1e3*t_large:.3f} ms, of which about {100*min(1.0, t_small/t_large):.0f}% overhead")
    best = max(f.values(), key=lambda r: r["train_events_per_s"])
    print(f"best training: {best['train_events_per_s']/1e6:.2f} M events/s at batch {best['batch']} (goal >= 20)")
    bests = max(f.values(), key=lambda r: r["sample_events_per_s"])
    print(f"best sampling: {bests['sample_events_per_s']/1e6:.2f} M events/s at batch {bests['batch']} (goal >= 50)")
EOF
done
exit $status
