#!/usr/bin/env bash
# Runs the public HTTP cache conformance suite (the one behind cache-tests.fyi) against tamis on
# loopback, with the shared runner and configs in ../shared/cache-conformance/.
#
#   SUITE_DIR=/path/to/cache-tests bash benches/cache-conformance.sh
#
# The suite is not on npm and is never committed here: bring it as that folder's README says
# (the search tool's fetch of github:http-tests/cache-tests, then git archive into SUITE_DIR).
# Needs node and curl. Prints "cache-tests: N passed, M failed, K optional-failed (...)".
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SUITE_DIR:?set SUITE_DIR to a checkout of http-tests/cache-tests}"
RUNNER=${RUNNER:-../shared/cache-conformance/run-cache-tests.sh}
OUT=${OUT:-$(mktemp -d)}
export SUITE_DIR RESULTS_DIR="$OUT/results" LOG_DIR="$OUT/logs" NPM_CACHE="${NPM_CACHE:-$OUT/npm-cache}"

cargo build --release --quiet
target/release/tamis --config benches/cache-conformance.toml 2>"$OUT/tamis.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/8099) 2>/dev/null && break
  sleep 0.05
done
bash "$RUNNER" -n tamis http://127.0.0.1:8099
echo "results: $RESULTS_DIR/tamis.summary.json (failures: jq -r '.failures[] | select(.kind==\"fail\") | .id')"
