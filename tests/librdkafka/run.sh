#!/usr/bin/env bash
# Run librdkafka's own test suite (shipped inside the rdkafka-sys crate) against
# a real Sluice broker.
#
# Usage: tests/librdkafka/run.sh [--local] [--expected-only] [TEST_ID...]
#   TEST_ID...       run only these ids (e.g. 0001 0031); default: every id in
#                    expected-pass.txt and candidates.txt
#   --expected-only  run only expected-pass.txt
#   --local          additionally run a broker-less sanity run (librdkafka's
#                    local/mock tests, `test-runner -l`); informative only
#
# Environment:
#   SLUICE_BIN               broker binary (default <repo>/target/debug/sluice,
#                            built with `cargo build -p sluice` if missing)
#   SLUICE_EXTRA_ARGS        extra args for `sluice serve`, after the defaults
#                            (so e.g. `--set group.initial.rebalance.delay.ms=3000`
#                            overrides them)
#   GROUP_INITIAL_REBALANCE_DELAY_MS  broker group.initial.rebalance.delay.ms
#                            (default 0, as in Kafka's own test/dev configs)
#   SLUICE_LIBRDKAFKA_CACHE  build cache (default ~/.cache/sluice-librdkafka)
#   RDKAFKA_SYS_VERSION      crate version to fetch (default pinned in build.sh)
#   TEST_KAFKA_VERSION       broker version the tests assume (default 3.7.0)
#   PER_TEST_TIMEOUT         wall-clock limit per test id in seconds (default 300)
#   TEST_TIMEOUT_MULTIPLIER  librdkafka test.timeout.multiplier (default 2)
#   TEST_CONF_EXTRA          extra whitespace-separated key=value lines for test.conf
#   RESULTS_DIR              per-test logs (default <repo>/target/librdkafka-results)
#   QUICK_MODE               auto (default): librdkafka quick mode (-Q) except for
#                            ids marked `full` in the lists; 1: -Q for all; 0: none
#
# Exit status: 0 iff every test in expected-pass.txt PASSED.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
EXPECTED_FILE="$HERE/expected-pass.txt"
CANDIDATES_FILE="$HERE/candidates.txt"

SLUICE_BIN="${SLUICE_BIN:-$REPO/target/debug/sluice}"
export TEST_KAFKA_VERSION="${TEST_KAFKA_VERSION:-3.7.0}"
PER_TEST_TIMEOUT="${PER_TEST_TIMEOUT:-300}"
TEST_TIMEOUT_MULTIPLIER="${TEST_TIMEOUT_MULTIPLIER:-2}"
RESULTS_DIR="${RESULTS_DIR:-$REPO/target/librdkafka-results}"
GROUP_INITIAL_REBALANCE_DELAY_MS="${GROUP_INITIAL_REBALANCE_DELAY_MS:-0}"

run_local=0
only_expected=0
selected=()
for a in "$@"; do
  case "$a" in
    --local) run_local=1 ;;
    --expected-only) only_expected=1 ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    -*) echo "unknown option $a" >&2; exit 2 ;;
    *) selected+=("$a") ;;
  esac
done

# List line format: "<id> [full] [subtests=SUBSTRING]  # comment". `full` = run without -Q: in quick
# mode librdkafka silently skips every SUB_TEST() not declared SUB_TEST_QUICK(),
# which turns most consumer-group tests into no-ops that "pass".
full_of() { [[ -f "$1" ]] && sed -e 's/#.*//' "$1" | awk '$1 ~ /^[0-9][0-9][0-9][0-9]$/ && $2 == "full" {print $1}' || true; }
# An optional "subtests=SUBSTRING" token restricts an id to librdkafka's matching
# sub-tests (its SUBTESTS variable), e.g. only 0081's DeleteRecords sub-tests.
subtests_of() { [[ -f "$1" ]] && sed -e 's/#.*//' "$1" | awk -v id="$2" '$1 == id { for (i = 2; i <= NF; i++) if ($i ~ /^subtests=/) { sub(/^subtests=/, "", $i); print $i; exit } }' || true; }
ids_of() { [[ -f "$1" ]] && sed -e 's/#.*//' "$1" | awk '$1 ~ /^[0-9][0-9][0-9][0-9]$/ {print $1}' || true; }
mapfile -t EXPECTED < <(ids_of "$EXPECTED_FILE")
mapfile -t CANDIDATES < <(ids_of "$CANDIDATES_FILE")
mapfile -t FULL < <(full_of "$EXPECTED_FILE"; full_of "$CANDIDATES_FILE")
QUICK_MODE="${QUICK_MODE:-auto}"
quick_flag() {
  local x
  case "$QUICK_MODE" in 0) return ;; 1) echo -Q; return ;; esac
  for x in "${FULL[@]}"; do [[ "$x" == "$1" ]] && return; done
  echo -Q
}
is_expected() { local x; for x in "${EXPECTED[@]}"; do [[ "$x" == "$1" ]] && return 0; done; return 1; }

if ((${#selected[@]})); then
  TO_RUN=("${selected[@]}")
elif ((only_expected)); then
  TO_RUN=("${EXPECTED[@]}")
else
  mapfile -t TO_RUN < <(printf '%s\n' "${EXPECTED[@]}" "${CANDIDATES[@]}" | sort -u)
fi

# ---- 1. librdkafka + test-runner (cached) ------------------------------------
LRK="$("$HERE/build.sh" | tail -1)" || { echo "librdkafka build failed" >&2; exit 1; }
[[ -x "$LRK/tests/test-runner" ]] || { echo "no test-runner in $LRK" >&2; exit 1; }
TDIR="$LRK/tests"
export LD_LIBRARY_PATH="$LRK/src:$LRK/src-cpp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$RESULTS_DIR"
RESULTS_DIR="$(cd "$RESULTS_DIR" && pwd)"   # tests run with cwd=$TDIR
rm -f "$RESULTS_DIR"/*.log

strip_ansi() { sed -e 's/\x1b\[[0-9;]*[mK]//g' -e 's/\x1b(B//g'; }

# ---- optional broker-less sanity run -----------------------------------------
if ((run_local)); then
  echo "=== local (broker-less) sanity run: test-runner -l -Q -p2 ==="
  (cd "$TDIR" && RDKAFKA_TEST_CONF=/dev/null TESTS="${LOCAL_TESTS:-0004,0006,0022,0025,0031,0034,0039,0043,0046,0058,0072,0074,0078,0080,0084,0086,0095,0100,0121,0136,0146}" \
     timeout 900 ./test-runner -l -Q -p2 >"$RESULTS_DIR/local.log" 2>&1)
  echo "local run exit status: $? (log: $RESULTS_DIR/local.log)"
  strip_ansi <"$RESULTS_DIR/local.log" | grep -E '^\|' | grep -vE '<MAIN>' || true
  echo
fi

((${#TO_RUN[@]})) || { echo "no tests selected"; exit 0; }

# ---- 2. broker ---------------------------------------------------------------
if [[ ! -x "$SLUICE_BIN" ]]; then
  echo "building sluice ($SLUICE_BIN missing)" >&2
  (cd "$REPO" && cargo build -p sluice >&2) || { echo "cargo build failed" >&2; exit 1; }
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-librdkafka.XXXXXX")"
BROKER_PID=""
cleanup() {
  if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill "$BROKER_PID" 2>/dev/null; wait "$BROKER_PID" 2>/dev/null
  fi
  [[ -n "${KEEP_WORK:-}" ]] || rm -rf "$WORK"
}
trap cleanup EXIT

PORT="$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')"
restarts=0
start_broker() {
  # sluice reads every SLUICE_* environment variable as a broker setting, so the
  # runner's own SLUICE_* variables must not reach it ("unknown setting").
  # shellcheck disable=SC2086
  env -u SLUICE_EXTRA_ARGS -u SLUICE_LIBRDKAFKA_CACHE \
    "$SLUICE_BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" \
    --set num.partitions=4 \
    --set "group.initial.rebalance.delay.ms=$GROUP_INITIAL_REBALANCE_DELAY_MS" \
    ${SLUICE_EXTRA_ARGS:-} >>"$RESULTS_DIR/sluice.log" 2>&1 &
  BROKER_PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.2
  done
  echo "sluice did not start listening on 127.0.0.1:$PORT; log tail:" >&2
  tail -20 "$RESULTS_DIR/sluice.log" >&2
  return 1
}
: >"$RESULTS_DIR/sluice.log"
start_broker || exit 1
echo "sluice pid $BROKER_PID on 127.0.0.1:$PORT (data $WORK/data, log $RESULTS_DIR/sluice.log)"

# test.conf lives in the per-run work dir (test-runner reads $RDKAFKA_TEST_CONF),
# so two runs with different RESULTS_DIRs can share one librdkafka build.
CONF="$WORK/test.conf"
cat >"$CONF" <<EOF
# generated by sluice tests/librdkafka/run.sh
bootstrap.servers=127.0.0.1:$PORT
test.timeout.multiplier=$TEST_TIMEOUT_MULTIPLIER
EOF
# shellcheck disable=SC2086
[[ -n "${TEST_CONF_EXTRA:-}" ]] && printf '%s\n' $TEST_CONF_EXTRA >>"$CONF"
export RDKAFKA_TEST_CONF="$CONF"

# ---- 3. run ------------------------------------------------------------------
declare -A STATUS NAME DETAIL
for id in "${TO_RUN[@]}"; do
  log="$RESULTS_DIR/$id.log"
  start=$(date +%s)
  # (the outer 2>/dev/null only hides bash's "Aborted"/"Killed" job notices)
  q="$(quick_flag "$id")"
  st="${SUBTESTS:-$(subtests_of "$EXPECTED_FILE" "$id")}"
  # shellcheck disable=SC2086
  { (cd "$TDIR" && if [[ -n "$st" ]]; then export SUBTESTS="$st"; else unset SUBTESTS; fi && TESTS="$id" exec timeout -k 10 "$PER_TEST_TIMEOUT" ./test-runner -p1 -L $q >"$log" 2>&1); } 2>/dev/null
  rc=$?
  dur=$(( $(date +%s) - start ))
  # Summary rows: "| 0031_get_offsets | PASSED | 1.2s | detail"
  rows="$(strip_ansi <"$log" | grep -E '^\| [0-9]{4}_' || true)"
  names="$(strip_ansi <"$log" | grep -oE '^\[[0-9]{4}_[A-Za-z0-9_]+[ /]' | tr -d '[ /' | sort -u | paste -sd, -)"
  # First librdkafka failure: '### Test "X" failed at file:line:func() at DATE: ###' + message line
  firstfail="$(strip_ansi <"$log" | grep -A1 -m1 -E '^### Test "[0-9]{4}_' |
    sed -E -e '1s/^### Test "([^"]*)" failed at ([^ ]*) at .*/\1 @\2:/' | paste -sd' ' - | cut -c1-220)"
  failed="$(awk -F'|' '$3 ~ /FAILED|RUNNING/' <<<"$rows")"
  passed="$(awk -F'|' '$3 ~ /PASSED/' <<<"$rows")"
  if ((rc == 124 || rc == 137)); then
    st=TIMEOUT; det="killed after ${PER_TEST_TIMEOUT}s; ${firstfail:-last: $(strip_ansi <"$log" | grep -E '^\[[0-9]{4}_' | tail -1 | cut -c1-160)}"
  elif [[ -n "$failed" ]]; then
    st=FAILED; det="${firstfail:-$(awk -F'|' '{print $2": "$5}' <<<"$failed" | tr -s ' ' | paste -sd';' - | cut -c1-200)}"
  elif ((rc != 0)); then
    st=FAILED; det="exit $rc: ${firstfail:-$(strip_ansi <"$log" | grep -E 'FAIL|Assert|fatal|ERR' | head -1 | cut -c1-160)}"
  elif [[ -n "$passed" ]]; then
    st=PASSED; det=""
  else
    st=SKIPPED; det="$(awk -F'|' '$3 ~ /SKIPPED/ {print $5}' <<<"$rows" | grep -v 'negative test flags' | tr -s ' ' | head -1 | cut -c1-160)"
  fi
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then
    det="BROKER DIED during this test; $det"; [[ $st == PASSED ]] && st=FAILED
    restarts=$((restarts + 1)); start_broker || exit 1
  fi
  STATUS[$id]=$st; NAME[$id]="${names:-?}"; DETAIL[$id]="$det"
  printf '%-4s %-8s %4ss %-2s %s\n' "$id" "$st" "$dur" "$q" "${names:-}" >&2
done

# ---- 4. report ---------------------------------------------------------------
echo
printf '%-4s | %-50s | %-8s | %-9s | %s\n' ID NAME RESULT LIST DETAIL
printf -- '-----+-%s-+----------+-----------+-------\n' "$(printf '%.0s-' {1..50})"
bad=0
for id in "${TO_RUN[@]}"; do
  kind=candidate; is_expected "$id" && kind=expected
  printf '%-4s | %-50s | %-8s | %-9s | %s\n' "$id" "${NAME[$id]:0:50}" "${STATUS[$id]}" "$kind" "${DETAIL[$id]}"
done
for id in "${EXPECTED[@]}"; do
  if [[ -z "${STATUS[$id]:-}" ]]; then
    ((${#selected[@]})) || { echo "expected $id: not run"; bad=1; }
  elif [[ "${STATUS[$id]}" == SKIPPED ]]; then
    # The test skipped itself (librdkafka skips timing-sensitive tests when CI is set).
    echo "note: expected-pass test $id skipped itself: ${DETAIL[$id]}"
  elif [[ "${STATUS[$id]}" != PASSED ]]; then
    echo "REGRESSION: expected-pass test $id is ${STATUS[$id]}"; bad=1
  fi
done
n_pass=0; for id in "${TO_RUN[@]}"; do [[ ${STATUS[$id]} == PASSED ]] && n_pass=$((n_pass + 1)); done
echo
echo "librdkafka $(basename "$LRK"), TEST_KAFKA_VERSION=$TEST_KAFKA_VERSION: $n_pass/${#TO_RUN[@]} passed; broker restarts: $restarts; logs in $RESULTS_DIR"
exit $bad
