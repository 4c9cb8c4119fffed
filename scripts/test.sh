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
