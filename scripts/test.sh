#!/usr/bin/env bash
# The one test command: installs what it needs (idempotent), builds, runs the
# Rust tests and the end-to-end tests against the real `sluice` binary.
# Run from anywhere; works on a fresh Debian bookworm machine as root.
#
# Env:
#   SLUICE_SKIP_INSTALL=1   do not touch apt/pip (use what is installed)
#   SLUICE_SKIP_CARGO_TEST=1  skip `cargo test --workspace`
#   SLUICE_SKIP_LIBRDKAFKA=1  skip librdkafka's own test suite
#   PYTEST_ARGS="-k kcat"   extra arguments for pytest
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"
log() { echo "==> $*" >&2; }

SUDO=""
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# ---- 1. system packages -----------------------------------------------------
if [[ -z "${SLUICE_SKIP_INSTALL:-}" ]]; then
  need=()
  command -v kcat >/dev/null 2>&1 || need+=(kcat)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then need+=(python3-venv); fi
  # libfuse2 for tests/e2e/faultyfs.py (fusepy), the failing-fsync file system.
  ls /usr/lib/*/libfuse.so.2 >/dev/null 2>&1 || need+=(libfuse2)
  # iproute2 (`ip netns`, veth) for tests/e2e/test_network_partition.py.
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi

  # ---- 2. python venv with the pinned clients --------------------------------
  VENV="$ROOT/.venv"
  REQ="$ROOT/tests/e2e/requirements.txt"
  STAMP="$VENV/.requirements.sha256"
  want="$(sha256sum "$REQ" | cut -d' ' -f1)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv at .venv"
    python3 -m venv "$VENV"
  fi
  if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want" ]]; then
    log "pip install -r tests/e2e/requirements.txt"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
    echo "$want" > "$STAMP"
  fi
fi

if [[ -n "${SLUICE_INSTALL_ONLY:-}" ]]; then
  log "install done"
  exit 0
fi

# ---- 3. build and Rust tests --------------------------------------------------
command -v cargo >/dev/null 2>&1 || { echo "cargo not found (install Rust: https://rustup.rs)" >&2; exit 1; }
log "cargo fmt --check and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
log "cargo build --workspace --all-targets"
cargo build --workspace --all-targets
if [[ -z "${SLUICE_SKIP_CARGO_TEST:-}" ]]; then
  log "cargo test --workspace"
  cargo test --workspace
fi

# ---- 4. end-to-end tests ------------------------------------------------------
export SLUICE_BIN="${SLUICE_BIN:-$ROOT/target/debug/sluice}"

# librdkafka's own test suite, the tests listed in tests/librdkafka/expected-pass.txt
# (builds librdkafka from the rdkafka-sys crate once, cached under ~/.cache).
if [[ -z "${SLUICE_SKIP_LIBRDKAFKA:-}" ]]; then
  log "librdkafka test suite (tests/librdkafka/run.sh --expected-only)"
  bash "$ROOT/tests/librdkafka/run.sh" --expected-only
fi

log "pytest tests/e2e (SLUICE_BIN=$SLUICE_BIN)"
# shellcheck disable=SC2086
"$ROOT/.venv/bin/python" -m pytest tests/e2e -v ${PYTEST_ARGS:-}
