#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: tamis against hyper alone
# (benches/bare.rs) on a cached 20 KB hit and on the uncached 1 KB POST forward of
# benches/peers.sh, and tamis alone on peers.sh's 1 KB Plausible event through its scrubber. Unlike requests/s on a shared VM, the count barely moves between runs of
# the same binary, so it shows a code change's effect within about 1 %.
#
#   bash benches/instructions.sh             # 8 s of load per row
#   SMOKE=1 bash benches/instructions.sh     # 1 s: checks that it still runs and prints
#   TAMIS_BIN=/tmp/old/tamis bash benches/instructions.sh   # another build, same load
#   CALLGRIND_DIR=/tmp/cg bash benches/instructions.sh      # keep the profiles, for
#                                                           # callgrind_annotate
#
# Each server runs under callgrind pinned to core 0, so with one worker thread (tamis starts
# one per core it may run on); wrk sends 10 connections' worth of
# load through it; the count is the process's whole total (start-up included, ~3 M
# instructions, under 1 % of a run) over the requests wrk completed. The origin is nginx.
# Allocations per request come from the same profile: callgrind's exact count of calls into
# libc's allocator (malloc, calloc, realloc, posix_memalign, aligned_alloc) over the same
# requests, start-up included, so no second (instrumented) build is needed to count them.
#
# Needs: apt-get install valgrind nginx-light wrk curl
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
[ -n "${SMOKE:-}" ] && DURATION=1
PORT_BASE=${PORT_BASE:-18200}
ORIGIN=$PORT_BASE TAMIS=$((PORT_BASE + 1)) HYPER=$((PORT_BASE + 2))

for tool in valgrind nginx wrk curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind nginx-light wrk curl)" >&2; exit 1; }
done

source benches/lib.sh
bench_binaries
bench_workdir
out=${CALLGRIND_DIR:-$work}
mkdir -p "$out"

bench_origin "$ORIGIN"
bench_tamis_config "$TAMIS" "$ORIGIN"
bench_plausible_event "$work/event.json" "$work/plausible.lua"
bench_origin_start "$ORIGIN"

# count NAME PORT PATH [LUA] -- CMD...: one server under callgrind, one load, one row.
count() {
  local name=$1 port=$2 path=$3 lua=$4
  shift 5
  local file="$out/callgrind.$name"
  TOKIO_WORKER_THREADS=1 taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$file" "$@" \
    2>"$work/logs/$name.log" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/s/tile.png" && break; sleep 0.2; done
  local reqs
  reqs=$(wrk -t1 -c10 -d"${DURATION}s" ${lua:+-s "$lua"} "http://127.0.0.1:$port$path" |
    awk '/requests in/ {print $1}')
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  local refs
  refs=$(grep -o 'refs: *[0-9,]*' "$work/logs/$name.log" | tr -dc 0-9)
  if [ -z "$refs" ] || [ -z "$reqs" ] || [ "$reqs" -eq 0 ]; then
    echo "$name: no count (see $work/logs/$name.log)" >&2
    cat "$work/logs/$name.log" >&2
    exit 1
  fi
  printf '%s %s %s %s\n' "$name" "$reqs" "$((refs / reqs))" "$(allocations "$file" "$reqs")" >>"$work/rows"
}

# allocations FILE REQUESTS: calls into the allocator per request in a callgrind profile.
allocations() {
  python3 - "$1" "$2" <<'PY'
import re, sys
alloc = {"malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign"}
names, fn, cfn, calls = {}, None, None, 0
pending = None
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        kind, i, name = m.groups()
        if name is not None:
            names[i] = name
        if kind == "fn":
            fn = names.get(i)
        else:
            cfn = names.get(i)
        continue
    if line.startswith("calls="):
        pending = int(line[6:].split()[0])
    elif pending is not None:
        # The line after calls= is the call's cost: count calls into the allocator from
        # outside it (realloc's own malloc would count twice).
        if cfn in alloc and fn not in alloc:
            calls += pending
        pending = None
print(f"{calls / int(sys.argv[2]):.1f}")
PY
}

hyper_cmd=("$HYPER_BIN" "127.0.0.1:$HYPER" "http://127.0.0.1:$ORIGIN" /s/tile.png)
count tamis-hit "$TAMIS" /s/tile.png "" -- "$TAMIS_BIN" --config "$work/tamis.toml"
count hyper-hit "$HYPER" /s/tile.png "" -- "${hyper_cmd[@]}"
count tamis-forward "$TAMIS" /post/e "$work/post.lua" -- "$TAMIS_BIN" --config "$work/tamis.toml"
count hyper-forward "$HYPER" /post/e "$work/post.lua" -- "${hyper_cmd[@]}"
count tamis-plausible "$TAMIS" /p/api/event "$work/plausible.lua" -- "$TAMIS_BIN" --config "$work/tamis.toml"

rev=${TAMIS_REV:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "tamis $rev ($TAMIS_BIN), $(date -u +%Y-%m-%d), ${DURATION}s of wrk -c10 per row"
python3 - "$work/rows" <<'PY'
import sys
rows = {n: (int(r), int(i), a) for n, r, i, a in (l.split() for l in open(sys.argv[1]))}
print("| case | tamis instructions/req | hyper alone | tamis/hyper | allocations/req (tamis, hyper) | requests counted (tamis, hyper) |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for case, label in (("hit", "cached 20 KB hit"), ("forward", "uncached 1 KB POST forward")):
    t, h = rows[f"tamis-{case}"], rows[f"hyper-{case}"]
    print(f"| {label} | {t[1]:,} | {h[1]:,} | {t[1] / h[1]:.2f} | {t[2]}, {h[2]} | {t[0]:,}, {h[0]:,} |")
p = rows["tamis-plausible"]
print(f"| 1 KB Plausible event through its scrubber | {p[1]:,} | | | {p[2]} | {p[0]:,} |")
PY
