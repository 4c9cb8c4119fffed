#!/usr/bin/env bash
# Runs every test against the real model: installs the model if needed (no build of the
# binary beyond what the tests need), then the whole workspace's tests in release.
set -euo pipefail
cd "$(dirname "$0")/.."
SIEVE_SKIP_BUILD=1 ./scripts/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --locked --workspace --no-fail-fast
  cargo test --release --locked --workspace --doc
else
  cargo test --release --locked --workspace
fi

# The GPU code (feature `cuda`) built and tested without a GPU: the refusals, the shape checks,
# and the kernels compiled by NVRTC when its library can be installed from PyPI (no GPU needed).
# Tests that need a GPU skip themselves; scripts/gpu-check.sh runs them on a GPU machine.
CACHE="${SIEVE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/sieve}"
NVRTC_DIR="$CACHE/nvrtc-13.0.88"
if [ ! -e "$NVRTC_DIR/libnvrtc.so.13" ]; then
  tmp="$(mktemp -d)"
  if python3 -m pip download --no-deps --disable-pip-version-check -q -d "$tmp" nvidia-cuda-nvrtc==13.0.88 \
    && python3 -c 'import sys, zipfile, glob, os
z = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0]); os.makedirs(sys.argv[2], exist_ok=True)
for m in z.namelist():
    if m.startswith("nvidia/cu13/lib/libnvrtc"):
        open(os.path.join(sys.argv[2], os.path.basename(m)), "wb").write(z.read(m))' "$tmp" "$NVRTC_DIR"; then
    echo "[test] NVRTC installed in $NVRTC_DIR" >&2
  else
    echo "[test] NVRTC could not be installed: the kernel compile test will skip" >&2
  fi
  rm -rf "$tmp"
fi
export LD_LIBRARY_PATH="$NVRTC_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --locked -p sieve-kernels -p sieve-engine --features sieve-kernels/cuda,sieve-engine/cuda --lib -E 'test(gpu)'
  cargo nextest run --release --locked -p sieve-engine --features cuda --test gpu_decode
  cargo nextest run --release --locked -p sieve --features cuda --test gpu
else
  cargo test --release --locked -p sieve-kernels -p sieve-engine --features sieve-kernels/cuda,sieve-engine/cuda --lib gpu
  cargo test --release --locked -p sieve-engine --features cuda --test gpu_decode
  cargo test --release --locked -p sieve --features cuda --test gpu
fi
