#!/usr/bin/env bash
# Fetch librdkafka (as shipped inside the rdkafka-sys crate on crates.io) and
# build librdkafka + its test-runner once. Cached; safe to re-run.
# Prints nothing on stdout except the final librdkafka dir (last line).
set -euo pipefail

RDKAFKA_SYS_VERSION="${RDKAFKA_SYS_VERSION:-4.10.0+2.12.1}"
LIBRDKAFKA_VERSION="${RDKAFKA_SYS_VERSION#*+}"
CACHE="${SLUICE_LIBRDKAFKA_CACHE:-$HOME/.cache/sluice-librdkafka}"
JOBS="${JOBS:-2}"
SRC="$CACHE/librdkafka-$LIBRDKAFKA_VERSION"
# Bump the suffix when the build recipe changes, to force a rebuild of old caches.
STAMP="$SRC/.sluice-built-v2"

log() { echo "[librdkafka-build] $*" >&2; }

if [[ -f "$STAMP" && -x "$SRC/tests/test-runner" ]]; then
  log "cached build at $SRC"
  echo "$SRC"
  exit 0
fi

mkdir -p "$CACHE"

# --- 1. Debian build deps (only the ones we actually use) ------------------
need_pkgs=()
command -v cc >/dev/null 2>&1 || need_pkgs+=(build-essential)
command -v c++ >/dev/null 2>&1 || need_pkgs+=(build-essential)
command -v make >/dev/null 2>&1 || need_pkgs+=(build-essential)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
[[ -f /usr/include/zlib.h ]] || need_pkgs+=(zlib1g-dev)
# RapidJSON: only used by the tests to validate statistics JSON (0053, 0110).
[[ -f /usr/include/rapidjson/schema.h ]] || need_pkgs+=(rapidjson-dev)
if ((${#need_pkgs[@]})); then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    log "installing: ${need_pkgs[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >&2
  else
    log "missing build deps: ${need_pkgs[*]} (install them and re-run)"; exit 1
  fi
fi

# --- 2. Obtain the crate source via a throwaway cargo project ---------------
if [[ ! -d "$SRC/tests" ]]; then
  FETCH="$CACHE/fetch"
  mkdir -p "$FETCH/src"
  cat >"$FETCH/Cargo.toml" <<TOML
[package]
name = "sluice-librdkafka-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
rdkafka-sys = { version = "=${RDKAFKA_SYS_VERSION%%+*}", default-features = false }

[workspace]
TOML
  echo "" >"$FETCH/src/lib.rs"
  log "cargo fetch rdkafka-sys =$RDKAFKA_SYS_VERSION"
  (cd "$FETCH" && cargo fetch >&2)
  manifest=$(cd "$FETCH" && cargo metadata --format-version 1 2>/dev/null | python3 -c '
import json,sys
m=json.load(sys.stdin)
print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="rdkafka-sys"))')
  crate_dir=$(dirname "$manifest")
  [[ -d "$crate_dir/librdkafka/tests" ]] || { log "no librdkafka/tests in $crate_dir"; exit 1; }
  rm -rf "$SRC.tmp"
  cp -a "$crate_dir/librdkafka" "$SRC.tmp"
  mv "$SRC.tmp" "$SRC"
  log "copied $crate_dir/librdkafka -> $SRC"
fi

# --- 3. Build -----------------------------------------------------------------
cd "$SRC"
start=$(date +%s)
if [[ ! -f Makefile.config || ! -f "$STAMP" ]]; then
  log "configure"
  # Only plaintext + builtin codecs: SSL/SASL/OIDC/zstd aren't under test.
  ./configure --no-download --disable-ssl --disable-gssapi --disable-curl \
    --disable-zstd --disable-lz4-ext --enable-zlib >&2
fi
log "make -j$JOBS libs"
make -j"$JOBS" libs >&2
log "make -C tests -j$JOBS build"
make -C tests -j"$JOBS" build >&2
end=$(date +%s)
log "build took $((end - start))s"
echo "$((end - start))" >"$STAMP"
echo "$SRC"
