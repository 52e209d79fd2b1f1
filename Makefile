# FEDHEX: `make demo` runs the main job end to end; `make test` runs the whole
# suite. Both install what is missing first (scripts/setup.sh).

SHELL := /bin/bash
FEDHEX_CACHE ?= $(HOME)/.cache/fedhex
FEDHEX_TORCH_VENV ?= $(FEDHEX_CACHE)/torch-venv
export FEDHEX_CACHE FEDHEX_TORCH_VENV
# tch finds libtorch through the venv's torch package.
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(FEDHEX_TORCH_VENV)/bin:$(PATH)
# Python peers used by tests (uproot, zuko, grpcio).
export FEDHEX_PYTHON := $(FEDHEX_TORCH_VENV)/bin/python
CARGO ?= cargo
# Where cargo builds (the Python extension shares it).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
BIN_DIR := $(TARGET_DIR)/release

.PHONY: setup build test lint python demo bench bench-stream bench-nd bench-scale zuko-compare gpu-check fidelity fidelity-nd clean

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release --bins

lint: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings

test: setup
	$(CARGO) fmt --check
	$(CARGO) build --release --bins
	$(CARGO) test --release
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(MAKE) --no-print-directory python
	$(CARGO) fmt --check --manifest-path python/Cargo.toml
	CARGO_TARGET_DIR=$(TARGET_DIR) $(CARGO) clippy --release --manifest-path python/Cargo.toml -- -D warnings
	FEDHEX_BIN_DIR=$(BIN_DIR) $(FEDHEX_PYTHON) -m pytest python/tests -q

# The Python package (python/, issue #21): a wheel built by maturin, installed
# into the venv. The extension crate is a workspace of its own and shares the
# target directory (its first build compiles the library without MPI, PyO3 and
# some dependencies again: ~6 min on 2 cores; later builds take seconds).
python: setup
	rm -rf $(TARGET_DIR)/wheels/fedhex-*.whl
	CARGO_TARGET_DIR=$(TARGET_DIR) $(FEDHEX_TORCH_VENV)/bin/maturin build --release --quiet \
		-i $(FEDHEX_PYTHON) -m python/Cargo.toml -o $(TARGET_DIR)/wheels
	$(FEDHEX_TORCH_VENV)/bin/pip install -q --force-reinstall --no-deps $(TARGET_DIR)/wheels/fedhex-*.whl
	@$(FEDHEX_PYTHON) -c 'import fedhex; print("python: fedhex", fedhex.__version__, "installed in $(FEDHEX_TORCH_VENV)")'

demo: build
	@bash scripts/demo.sh

bench: setup
	$(CARGO) bench --bench bench_main

# Streamed generation of 1M and 10M events to .root/.npz: events/s and peak RSS.
bench-stream: setup
	@bash scripts/bench_sample_stream.sh $(DEVICE)

# Throughput at D = 2..12 beside zuko MAF and NSF (issue #19): a Markdown table (~3 min).
bench-nd: build
	@bash scripts/bench_nd.sh

# Scale-out (issue #22): a generated grid of N events (default 2e7), 1/2/4 ranks:
# index and read seconds, peak RSS per rank against the raw shard, training events/s.
bench-scale: build
	@bash scripts/bench_scale.sh $(N)

zuko-compare: build
	@bash scripts/zuko_compare.sh

gpu-check: build
	@bash scripts/gpu_check.sh

# Issue #8's accuracy benchmark: grid → training → 13 off-grid points → table (~10 min on 2 cores).
fidelity: build
	@bash scripts/fidelity.sh default

# The N-dimensional benchmark: 7 features, 3 labels (M_Φ, M_ω, Γ/M_Φ), 5x5x3 grid → two flows
# (seeds 42, 43) combined into an ensemble → 12 off-grid points → per-feature table with PASS/FAIL
# targets, widths from large samples, zuko NSF/MAF training time beside.
# EPOCHS, NEVENTS, NREF, GRID, POINTS, SEEDS, NBIG override (scripts/fidelity_nd.sh).
fidelity-nd: build
	@bash scripts/fidelity_nd.sh default

# Batch scripts on a throw-away one-node Slurm cluster on this machine (root, ~3 min; not part of `make test`).
.PHONY: slurm-test
slurm-test: build
	@bash tests/slurm/slurm_test.sh

clean:
	$(CARGO) clean
	rm -rf demo-out fidelity-out
