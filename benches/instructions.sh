#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: tamis against hyper alone
# (benches/bare.rs) on a cached 20 KB hit and on the uncached 1 KB POST forward of
# benches/peers.sh, and tamis alone on peers.sh's 1 KB Plausible event through its scrubber
# and on case h's disk hit (DISK_TILES 20 KB tiles round-robin, a 1 MiB memory tier: nearly
# every hit read from the disk tier; filled by a first tamis outside callgrind, then counted in
# a second one started on the same directory, after its index has loaded). Unlike requests/s on
# a shared VM, the count barely moves between runs of the same binary, so it shows a code
# change's effect within about 1 %.
#
#   bash benches/instructions.sh             # 8 s of load per row
#   SMOKE=1 bash benches/instructions.sh     # 1 s: checks that it still runs and prints
#   TAMIS_BIN=/tmp/old/tamis bash benches/instructions.sh   # another build, same load
#   CALLGRIND_DIR=/tmp/cg bash benches/instructions.sh      # keep the profiles, for
#                                                           # callgrind_annotate
#   CASES="forward hit" bash benches/instructions.sh         # only these rows (of hit,
#                                                           # forward, plausible, disk)
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
CASES=${CASES:-hit forward plausible disk}
DISK_TILES=${DISK_TILES:-2000}
[ -n "${SMOKE:-}" ] && DURATION=1 && DISK_TILES=300
PORT_BASE=${PORT_BASE:-18200}
ORIGIN=$PORT_BASE TAMIS=$((PORT_BASE + 1)) HYPER=$((PORT_BASE + 2))
TAMIS_DISK=$((PORT_BASE + 3)) TAMIS_DISK_ADMIN=$((PORT_BASE + 4))

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
# Case h's tiles (peers.sh): every /d/ URL is the same 20 KB tile, cacheable for an hour.
sed -i "s#^    location /p/ #    location /d/ { root $work/www; try_files /s/tile.png =404; add_header Cache-Control \"public, max-age=3600\"; }\n&#" \
  "$work/origin.conf"
bench_origin_start "$ORIGIN"

# The disk hit's tamis: peers.sh's tamis-disk (a 1 MiB memory tier, the tiles route on disk).
cat >"$work/tamis-disk.toml" <<TOML
[server]
listen = "127.0.0.1:$TAMIS_DISK"
[admin]
listen = "127.0.0.1:$TAMIS_DISK_ADMIN"
[cache]
max_bytes = 1048576
max_object_bytes = 65536
disk_dir = "$work/tcache"
max_disk_bytes = 268435456
[log]
access = false
[transparency]
enabled = false

$(bench_routes "$ORIGIN")

[[route]]
name = "disk"
kind = "tiles"
prefix = "/d/"
upstream = "http://127.0.0.1:$ORIGIN/d/{z}/{x}/{y}.png"
rate_limit = "off"
TOML
cat >"$work/disk.lua" <<LUA
local n, i = $DISK_TILES, 0
request = function()
  i = i % n + 1
  return wrk.format("GET", "/d/14/" .. (i % 128) .. "/" .. math.floor(i / 128) .. ".png")
end
LUA
disk_metric() { # NAME{LABELS prefix -> the sum of the disk tamis's matching series
  curl -s "http://127.0.0.1:$TAMIS_DISK_ADMIN/metrics" |
    awk -v p="$1" 'index($0, p) == 1 {n += $NF} END {printf "%d", n}'
}
# Fills the disk tier outside callgrind: one request per tile, then until all are written.
disk_fill() {
  local i
  for i in $(seq 1 "$DISK_TILES"); do
    echo "url = \"http://127.0.0.1:$TAMIS_DISK/d/14/$((i % 128))/$((i / 128)).png\""
    echo "output = \"/dev/null\""
  done >"$work/disk-urls"
  (cd "$work" && exec "$TAMIS_BIN" --config tamis-disk.toml) >"$work/logs/disk-fill.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$TAMIS_DISK_ADMIN/healthz" && break; sleep 0.1; done
  curl -s -K "$work/disk-urls"
  for _ in $(seq 200); do
    [ "$(disk_metric tamis_cache_disk_entries)" -ge "$DISK_TILES" ] && break
    sleep 0.1
  done
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}
# Before the disk hit's load: the index loaded (its start-up reads every file's head).
disk_loaded() {
  for _ in $(seq 600); do
    [ "$(disk_metric tamis_cache_disk_loaded_objects)" -ge "$DISK_TILES" ] &&
      [ "$(disk_metric tamis_cache_disk_loading)" -eq 0 ] && return 0
    sleep 0.2
  done
  echo "the disk tier did not load" >&2
  exit 1
}
# After it: the share of hits that came from disk.
disk_share() {
  local d m
  d=$(disk_metric 'tamis_cache_lookups_total{result="disk_hit"')
  m=$(disk_metric 'tamis_cache_lookups_total{result="hit"')
  echo "$d $m" >"$work/disk-share"
}

# count NAME PORT PATH [LUA] -- CMD...: one server under callgrind, one load, one row. READY
# and DONE, if set, run before the load and before the server stops; with READY, the counters
# are zeroed once it returns (what the server did before is not counted).
count() {
  local name=$1 port=$2 path=$3 lua=$4
  shift 5
  local file="$out/callgrind.$name"
  TOKIO_WORKER_THREADS=1 taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$file" "$@" \
    2>"$work/logs/$name.log" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/s/tile.png" && break; sleep 0.2; done
  if [ -n "${READY:-}" ]; then
    $READY
    callgrind_control -z "$pid" >/dev/null 2>&1
  fi
  local reqs
  reqs=$(wrk -t1 -c10 -d"${DURATION}s" ${lua:+-s "$lua"} "http://127.0.0.1:$port$path" |
    awk '/requests in/ {print $1}')
  ${DONE:-true}
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

wanted() { [[ " $CASES " == *" $1 "* ]]; }
hyper_cmd=("$HYPER_BIN" "127.0.0.1:$HYPER" "http://127.0.0.1:$ORIGIN" /s/tile.png)
touch "$work/rows"
if wanted hit; then
  count tamis-hit "$TAMIS" /s/tile.png "" -- "$TAMIS_BIN" --config "$work/tamis.toml"
  count hyper-hit "$HYPER" /s/tile.png "" -- "${hyper_cmd[@]}"
fi
if wanted forward; then
  count tamis-forward "$TAMIS" /post/e "$work/post.lua" -- "$TAMIS_BIN" --config "$work/tamis.toml"
  count hyper-forward "$HYPER" /post/e "$work/post.lua" -- "${hyper_cmd[@]}"
fi
if wanted plausible; then
  count tamis-plausible "$TAMIS" /p/api/event "$work/plausible.lua" -- "$TAMIS_BIN" --config "$work/tamis.toml"
fi
if wanted disk; then
  disk_fill
  READY=disk_loaded DONE=disk_share count tamis-disk "$TAMIS_DISK" /d/ "$work/disk.lua" -- \
    "$TAMIS_BIN" --config "$work/tamis-disk.toml"
fi

rev=${TAMIS_REV:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "tamis $rev ($TAMIS_BIN), $(date -u +%Y-%m-%d), ${DURATION}s of wrk -c10 per row"
python3 - "$work/rows" "$work/disk-share" "$DISK_TILES" <<'PY'
import sys
rows = {n: (int(r), int(i), a) for n, r, i, a in (l.split() for l in open(sys.argv[1]))}
print("| case | tamis instructions/req | hyper alone | tamis/hyper | allocations/req (tamis, hyper) | requests counted (tamis, hyper) |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for case, label in (("hit", "cached 20 KB hit"), ("forward", "uncached 1 KB POST forward")):
    if f"tamis-{case}" not in rows:
        continue
    t, h = rows[f"tamis-{case}"], rows[f"hyper-{case}"]
    print(f"| {label} | {t[1]:,} | {h[1]:,} | {t[1] / h[1]:.2f} | {t[2]}, {h[2]} | {t[0]:,}, {h[0]:,} |")
if "tamis-plausible" in rows:
    p = rows["tamis-plausible"]
    print(f"| 1 KB Plausible event through its scrubber | {p[1]:,} | | | {p[2]} | {p[0]:,} |")
if "tamis-disk" not in rows:
    sys.exit()
d = rows["tamis-disk"]
disk, memory = (int(x) for x in open(sys.argv[2]).read().split())
share = 100 * disk / max(disk + memory, 1)
print(f"| cached 20 KB hit, {int(sys.argv[3]):,} tiles, 1 MiB memory tier ({share:.1f} % of hits from disk) | {d[1]:,} | | | {d[2]} | {d[0]:,} |")
PY
