#!/usr/bin/env bash
# Runs one cargo-fuzz target for a while: scripts/fuzz.sh TARGET SECONDS [SANITIZER] [-- LIBFUZZER ARGS]
#
#   TARGET     request_frame | request_decode | record_batch | log_recovery
#   SECONDS    -max_total_time for libFuzzer
#   SANITIZER  none (default) or address
#
# Only the stable toolchain is installed here. libFuzzer needs the compiler's
# `-Cpasses=sancov-module` / `-Zsanitizer` instrumentation, which stable rustc refuses
# unless RUSTC_BOOTSTRAP=1 unlocks its nightly-only flags; cargo fuzz passes those flags,
# so the build and run use RUSTC_BOOTSTRAP=1. Nothing else (the workspace build, the tests)
# uses it. With a nightly toolchain installed, `cargo +nightly fuzz run` works the same.
#
# New inputs go to fuzz/corpus-run/TARGET (ignored by git); the committed seed corpus
# fuzz/corpus/TARGET is read, not written. Crashes land in fuzz/artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${1:?usage: scripts/fuzz.sh TARGET SECONDS [none|address] [-- libfuzzer args]}"
seconds="${2:?usage: scripts/fuzz.sh TARGET SECONDS [none|address] [-- libfuzzer args]}"
shift 2
sanitizer=none
if [[ $# -gt 0 && $1 != "--" ]]; then
    sanitizer="$1"
    shift
fi
[[ $# -gt 0 && $1 == "--" ]] && shift

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
mkdir -p "fuzz/corpus-run/$target" "fuzz/corpus/$target"
# Data directories of the targets (tmpfs when there is one: fsync is free there). libFuzzer
# exits without running destructors, so the script removes them.
scratch_parent=/dev/shm
[[ -d $scratch_parent ]] || scratch_parent="${TMPDIR:-/tmp}"
SLUICE_FUZZ_SCRATCH="$(mktemp -d "$scratch_parent/sluice-fuzz-$target-XXXXXX")"
export SLUICE_FUZZ_SCRATCH
trap 'rm -rf "$SLUICE_FUZZ_SCRATCH"' EXIT
# -rss_limit_mb: the request_frame target keeps a broker (page cache on tmpfs counts
# elsewhere); -timeout: a single input taking longer is reported as a hang.
cargo fuzz run --sanitizer "$sanitizer" --fuzz-dir fuzz "$target" \
    "fuzz/corpus-run/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 "$@"
