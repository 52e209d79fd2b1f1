#!/usr/bin/env bash
# Installs what FEDHEX needs and is missing, and nothing else (idempotent):
#  - Debian packages: OpenMPI, libclang, protobuf compiler, pkg-config, fonts
#  - a Python venv with torch==2.11.0 (libtorch for tch) and the test peers
#    (numpy, uproot, awkward, zuko, grpcio-tools), and maturin + pytest for the
#    Python package (python/, `make python`), cached outside the checkout in
#    $FEDHEX_TORCH_VENV (default ~/.cache/fedhex/torch-venv).
set -euo pipefail

TORCH_VERSION=2.11.0
VENV=${FEDHEX_TORCH_VENV:-${FEDHEX_CACHE:-$HOME/.cache/fedhex}/torch-venv}
APT_PKGS=(openmpi-bin libopenmpi-dev libclang-dev clang protobuf-compiler pkg-config fonts-dejavu-core)
PY_PKGS=(numpy uproot awkward zuko grpcio-tools maturin pytest)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

py_ok() {
  "$VENV/bin/python" - "$TORCH_VERSION" <<'PY' 2>/dev/null
import sys, importlib
import torch
assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
for m in ("numpy", "uproot", "awkward", "zuko", "grpc_tools", "maturin", "pytest"):
    importlib.import_module(m)
PY
}

if [ -x "$VENV/bin/python" ] && py_ok; then
  :
else
  echo "setup: preparing the torch venv in $VENV (torch==$TORCH_VERSION, ~4.6 GB on first install)"
  mkdir -p "$(dirname "$VENV")"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" "${PY_PKGS[@]}"
  py_ok || { echo "setup: the venv in $VENV is still incomplete" >&2; exit 1; }
fi
echo "setup: ok (venv $VENV)"
