#!/usr/bin/env bash
# Two tamis builds on the same load, run after one another in turns: what a code change does to
# requests/s and CPU per request. On a shared VM both move by ±15 % from one run to the next,
# so a single run of each says nothing; this alternates A and B and prints every run and the
# medians. (benches/instructions.sh counts instructions, which barely move, but misses what a
# change does to memory traffic: the request-future change of 28d8b58 saved 1.5 % of the
# instructions and 8 % of the CPU time.)
#
#   A=/tmp/old/tamis bash benches/ab.sh          # B defaults to this tree's release build
#   A=... B=... CASE=hit RUNS=8 DURATION=10 bash benches/ab.sh
#   SMOKE=1 A=target/release/tamis bash benches/ab.sh   # 1 s runs: checks it still works
#
# CASE: forward (default; the uncached 1 KB POST of peers.sh's case d), hit (the cached
# 20 KB tile of case a) or plausible (case d's 1 KB event through the Plausible scrubber). Each build runs alone on core 0 with one worker thread; wrk (50
# connections) and the origin (nginx) share core 1, as in peers.sh. CPU per request is the
# build's user + system time from /proc over the measured requests.
#
# Needs: apt-get install nginx-light wrk curl
set -euo pipefail
cd "$(dirname "$0")/.."

CASE=${CASE:-forward}
RUNS=${RUNS:-6}
DURATION=${DURATION:-5}
[ -n "${SMOKE:-}" ] && RUNS=1 DURATION=1
PORT_BASE=${PORT_BASE:-18300}
ORIGIN=$PORT_BASE TAMIS=$((PORT_BASE + 1))

for tool in nginx wrk curl taskset python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install nginx-light wrk curl)" >&2; exit 1; }
done
[ -n "${A:-}" ] || { echo "A=path/to/the/other/tamis is required" >&2; exit 1; }
A=$(realpath "$A")
source benches/lib.sh
TAMIS_BIN=${B:-}
bench_binaries
B=$TAMIS_BIN
bench_workdir

case $CASE in
  forward) path=/post/e lua=$work/post.lua ;;
  hit) path=/s/tile.png lua= ;;
  plausible)
    path=/p/api/event lua=$work/plausible.lua
    bench_plausible_event "$work/event.json" "$lua"
    ;;
  *) echo "CASE is forward, hit or plausible" >&2; exit 1 ;;
esac

bench_origin "$ORIGIN"
bench_tamis_config "$TAMIS" "$ORIGIN"
bench_origin_start "$ORIGIN" 1
tick=$(getconf CLK_TCK)

# run NAME BIN: one build, one warm-up second, one measured run; appends a row to $work/rows.
run() {
  (TOKIO_WORKER_THREADS=1 exec taskset -c 0 "$2" --config "$work/tamis.toml") 2>"$work/logs/$1.log" &
  local pid=$!
  pids+=("$pid")
  # Ready once it answers (the tile, so that a hit run starts cached); wrk warms the rest.
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$TAMIS/s/tile.png" && break; sleep 0.1; done
  taskset -c 1 wrk -t1 -c50 -d1s ${lua:+-s "$lua"} "http://127.0.0.1:$TAMIS$path" >/dev/null
  local before after out
  before=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$pid/stat")
  out=$(taskset -c 1 wrk -t1 -c50 -d"${DURATION}s" --latency ${lua:+-s "$lua"} "http://127.0.0.1:$TAMIS$path")
  after=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$pid/stat")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  local reqs rps p99
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  if [ -z "$reqs" ] || [ "$reqs" -eq 0 ]; then
    echo "$1: no requests served (see $work/logs/$1.log)" >&2
    cat "$work/logs/$1.log" >&2
    exit 1
  fi
  printf '%s %s %s %s %s\n' "$1" "$rps" "$reqs" "$((after - before))" "$p99" >>"$work/rows"
}

for i in $(seq "$RUNS"); do
  run A "$A"
  run B "$B"
done

echo "A: $A"
echo "B: $B"
echo "case $CASE, $RUNS runs of ${DURATION}s each, alternating, $(date -u +%Y-%m-%d)"
python3 - "$work/rows" "$tick" <<'PY'
import statistics, sys
tick = int(sys.argv[2])
runs = {"A": [], "B": []}
for line in open(sys.argv[1]):
    name, rps, reqs, ticks, p99 = line.split()
    runs[name].append((float(rps), int(ticks) / tick / int(reqs) * 1e6, p99))
print("| build | req/s, each run | median req/s | median CPU µs/req | p99, each run |")
print("| --- | --- | ---: | ---: | --- |")
for name, rows in runs.items():
    print(f"| {name} | {', '.join(f'{r[0]:.0f}' for r in rows)} | {statistics.median(r[0] for r in rows):.0f} "
          f"| {statistics.median(r[1] for r in rows):.1f} | {', '.join(r[2] for r in rows)} |")
a = statistics.median(r[0] for r in runs["A"])
b = statistics.median(r[0] for r in runs["B"])
wins = sum(rb[0] > ra[0] for ra, rb in zip(runs["A"], runs["B"]))
print(f"\nB/A median req/s: {b / a:.3f}; B faster in {wins} of {len(runs['A'])} turns")
PY
