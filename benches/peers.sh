#!/usr/bin/env bash
# tamis vs nginx proxy_cache vs Varnish, on loopback, each server under test pinned to core 0
# (tamis: one worker thread, as it starts one per core it may run on; nginx: one worker process;
# Varnish: one thread pool), the load generator and the origins pinned to core 1.
#
#   bash benches/peers.sh                      # every case, 10 s per server per case
#   DURATION=3 CASES="a f" bash benches/peers.sh
#   SMOKE=1 bash benches/peers.sh              # 1 s runs: checks that everything starts (< 60 s)
#   CASES=h bash benches/peers.sh              # the disk tier: disk hits vs nginx's disk cache
#
# Cases (CASES, default "a b c d e f g h"):
#   a  cached 20 KB tile (Cache-Control: public, max-age=3600), HTTP/1.1 keep-alive, wrk
#   b  cached 1 KB CSS
#   c  cached 100 KB woff2 font
#   d  uncached forward of a 1 KB JSON POST (the origin answers 202 "ok"): nginx proxy_pass
#      without cache, Varnish return(pass), tamis an EU pass_through static route (the same
#      plain forward), plus a second tamis row through its Plausible scrubber (/p/api/event:
#      parse, scrub, re-serialise), which the others have no equivalent of
#   e  COLD_CLIENTS (1000) concurrent requests on one cold key, origin answering after SLOW_MS
#      (300 ms): how many requests reach the origin (coalescing), and the latency of the burst
#   f  cached 20 KB tile over HTTPS, HTTP/1.1 (tamis: rustls; nginx: OpenSSL). Varnish has no
#      TLS: not measured
#   g  cached 20 KB tile over HTTP/2 (TLS, ALPN h2) with h2load, H2_STREAMS streams per
#      connection. Varnish: not measured (no TLS)
#   h  cached 20 KB tiles, DISK_TILES (2000) distinct URLs requested round-robin (wrk + Lua):
#      nginx serving from its disk cache; tamis from memory (its usual 256 MiB); and
#      "tamis-disk", a second tamis whose memory tier (1 MiB) holds 2 % of the set, so that
#      nearly every request is a disk hit (read and verified; promoted to memory only when
#      memory would still hold it at its next read, which round-robin never allows: the share
#      of disk hits during the run is printed). Each server is filled first (one request per URL)
#      and must not reach the origin during the run. Varnish: not measured (memory only)
#
# Knobs: DURATION (10), CONNS (50), CASES, SMOKE=1, VERBOSE=1 (print the load tools' output),
# H2_STREAMS (10), SLOW_MS (300), COLD_CLIENTS (1000), DISK_TILES (2000; 500 in smoke mode),
# PORT_BASE (18100: uses PORT_BASE..+9),
# WAIT_IDLE=N (on a shared machine: before each run wait up to N s for an idle second),
# TAMIS_BIN (default: `cargo build --release`, then target/release/tamis), TAMIS_REV (the
# revision TAMIS_BIN was built from, for the report).
#
# Columns: req/s, p50/p99 latency (wrk --latency; h2load from its per-request log), errors
# (non-2xx/3xx + socket errors), CPU seconds used by the server under test during the run
# (utime+stime from /proc/PID/stat, summed over nginx master+worker, Varnish manager+child),
# the same per request, core-0 busy % (CPU s / run time: below ~95 % the server was not the
# bottleneck), time cores 0 and 1 gave to anything but this benchmark (noise), peak RSS during the run (VmHWM, reset before each run via clear_refs: tamis,
# the nginx worker, the Varnish child), and the requests the origin received during the run.
#
# Exits 1 when a tamis run had errors or case e reached the origin more than once (CI smoke).
#
# Needs: apt-get install nginx-light varnish wrk nghttp2-client openssl curl python3 util-linux
# (Varnish compiles its VCL with cc: the varnish package pulls in gcc). Two cores or more.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=${SMOKE:-0}
DURATION=${DURATION:-10}
[ "$SMOKE" = 1 ] && DURATION=1
CONNS=${CONNS:-50}
CASES=${CASES:-"a b c d e f g h"}
DISK_TILES=${DISK_TILES:-2000}
[ "$SMOKE" = 1 ] && DISK_TILES=500
H2_STREAMS=${H2_STREAMS:-10}
SLOW_MS=${SLOW_MS:-300}
COLD_CLIENTS=${COLD_CLIENTS:-1000}
PORT_BASE=${PORT_BASE:-18100}
ORIGIN=$PORT_BASE SLOW=$((PORT_BASE + 1)) NGINX=$((PORT_BASE + 2)) NGINX_TLS=$((PORT_BASE + 3))
VARNISH=$((PORT_BASE + 4)) TAMIS=$((PORT_BASE + 5)) TAMIS_TLS=$((PORT_BASE + 6))
HYPER=$((PORT_BASE + 7)) TAMIS_DISK=$((PORT_BASE + 8)) TAMIS_DISK_ADMIN=$((PORT_BASE + 9))

missing=()
for tool in nginx varnishd wrk h2load taskset python3 openssl curl cc; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]}" >&2
  echo "install: apt-get install -y nginx-light varnish wrk nghttp2-client openssl curl python3 util-linux" >&2
  exit 1
fi
if [ "$(nproc)" -lt 2 ]; then
  echo "needs two cores (server under test on core 0, load generator on core 1)" >&2
  exit 1
fi
for port in $(seq "$PORT_BASE" $((PORT_BASE + 9))); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use: set PORT_BASE" >&2
    exit 1
  fi
done
# 1000 concurrent connections through a proxy need more than the usual 1024 descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" -lt 4096 ]; then
  echo "warning: open files limit $(ulimit -n); case e needs ~2 per client" >&2
fi

source benches/lib.sh
bench_binaries
bench_workdir

# ---------------------------------------------------------------------------------------------
# Content, certificate, configs.
mkdir -p "$work/www/s" "$work/ncache"
chmod 777 "$work/ncache"
head -c 20480 /dev/urandom >"$work/www/s/tile.png"
head -c 102400 /dev/urandom >"$work/www/s/font.woff2"
python3 - "$work/www/s/style.css" <<'PY'
import sys
rules, i = [], 0
while sum(map(len, rules)) < 1024:
    rules.append(".c%d{margin:%dpx;padding:0 %dpx;color:#%06x}\n" % (i, i, i, i * 4099))
    i += 1
open(sys.argv[1], "w").write("".join(rules)[:1023] + "\n")
PY
chmod -R a+rX "$work/www"
# A Plausible-style pageview, padded to 1 KB with props (tamis drops all of them).
bench_plausible_event "$work/event.json" "$work/post.lua"
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$work/event.json"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
chmod 644 "$work/key.pem" "$work/cert.pem"

# The origin: a separate nginx (not the one under test), on core 1.
cat >"$work/origin.conf" <<NGINX
daemon off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid $work/origin.pid;
error_log $work/origin-error.log warn;
events { worker_connections 8192; }
http {
  include /etc/nginx/mime.types;
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$ORIGIN backlog=4096;
    root $work/www;
    location /s/ { add_header Cache-Control "public, max-age=3600"; }
    # Case h: DISK_TILES distinct tile URLs, each the same 20 KB tile.
    location /d/ { try_files /s/tile.png =404; add_header Cache-Control "public, max-age=3600"; }
    location /post/ { return 202 "ok"; }
    location /p/ { return 202 "ok"; }
    location = /__status { stub_status; }
  }
}
NGINX

# The slow origin for case e: answers after SLOW_MS, counts the requests it gets per path.
cat >"$work/slow.py" <<'PY'
import sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
counts, lock = {}, threading.Lock()
delay = int(sys.argv[2]) / 1000
body = b"s" * 1024
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path.startswith("/__count/"):
            with lock:
                n = counts.get(self.path[len("/__count"):], 0)
            out = str(n).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        with lock:
            counts[self.path] = counts.get(self.path, 0) + 1
        time.sleep(delay)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Cache-Control", "public, max-age=3600")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class S(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY

# The burst client for case e: opens every connection first, then sends all requests at once.
cat >"$work/burst.py" <<'PY'
import asyncio, sys, time
host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
req = ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode()
async def connect(sem):
    async with sem:
        for _ in range(50):
            try:
                return await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.05)
        raise SystemExit("cannot connect")
async def one(r, w):
    t0 = time.monotonic()
    try:
        w.write(req)
        data = await asyncio.wait_for(r.read(), 60)
        status = data[9:12].decode() or "eof"
    except Exception as e:
        status = type(e).__name__
    w.close()
    return status, time.monotonic() - t0
async def main():
    sem = asyncio.Semaphore(100)
    conns = await asyncio.gather(*[connect(sem) for _ in range(n)])
    await asyncio.sleep(0.5)  # let the server accept them all
    t0 = time.monotonic()
    res = await asyncio.gather(*[one(r, w) for r, w in conns])
    wall = time.monotonic() - t0
    lat = sorted(t for _, t in res)
    statuses = {}
    for s, _ in res:
        statuses[s] = statuses.get(s, 0) + 1
    bad = sum(v for k, v in statuses.items() if k != "200")
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    print("rps=%.1f p50=%.2f p99=%.2f errors=%d requests=%d max=%.2f statuses=%s"
          % (n / wall, pct(0.50), pct(0.99), bad, n, lat[-1] * 1000, statuses))
asyncio.run(main())
PY

cat >"$work/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  proxy_cache_path $work/ncache keys_zone=z:10m max_size=256m inactive=1h use_temp_path=off;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }
  upstream slow { server 127.0.0.1:$SLOW; keepalive 64; }
  ssl_protocols TLSv1.2 TLSv1.3;   # 1.22 still defaults to TLSv1-1.2; tamis speaks 1.3
  ssl_certificate $work/cert.pem;
  ssl_certificate_key $work/key.pem;
  server {
    listen 127.0.0.1:$NGINX backlog=4096;
    listen 127.0.0.1:$NGINX_TLS ssl http2 backlog=4096;
    location /s/ { proxy_pass http://origin; proxy_cache z; proxy_cache_lock on; }
    location /slow/ { proxy_pass http://slow; proxy_cache z; proxy_cache_lock on; }
    location /d/ { proxy_pass http://origin; proxy_cache z; proxy_cache_lock on; }
    location /post/ { proxy_pass http://origin; }
    location /p/ { proxy_pass http://origin; }
  }
}
NGINX

cat >"$work/default.vcl" <<VCL
vcl 4.1;
backend origin { .host = "127.0.0.1"; .port = "$ORIGIN"; }
backend slow { .host = "127.0.0.1"; .port = "$SLOW"; .first_byte_timeout = 30s; }
sub vcl_recv {
  if (req.url ~ "^/slow/") { set req.backend_hint = slow; } else { set req.backend_hint = origin; }
  if (req.url ~ "^/(post|p)/") { return (pass); }
  # Like tamis: the site's cookies never reach a static upstream nor split the cache.
  unset req.http.Cookie;
  # Then the builtin vcl_recv: GET/HEAD looked up, cached per max-age.
}
VCL

# Case h's route, the same in both tamis: a tiles route (disk_cache defaults to true for tiles)
# in front of the origin's /d/, no per-client rate (one load generator).
disk_route() {
  cat <<TOML
[[route]]
name = "disk"
kind = "tiles"
prefix = "/d/"
upstream = "http://127.0.0.1:$ORIGIN/d/{z}/{x}/{y}.png"
rate_limit = "off"
TOML
}

cat >"$work/tamis.toml" <<TOML
[server]
listen = "127.0.0.1:$TAMIS"
tls_listen = "127.0.0.1:$TAMIS_TLS"
tls_cert = "cert.pem"
tls_key = "key.pem"
[cache]
max_bytes = 268435456
status_header = false
[log]
access = false
[upstream]
user_agent = "tamis-bench (+https://operator.test/)"

$(bench_routes "$ORIGIN")

[[route]]
name = "slow"
kind = "static"
prefix = "/slow/"
upstream = "http://127.0.0.1:$SLOW/slow/"

$(disk_route)
TOML

# Case h's second tamis: a memory tier of 1 MiB (about 50 of the DISK_TILES tiles), the rest
# on its disk tier; an admin listener for its disk metrics.
cat >"$work/tamis-disk.toml" <<TOML
[server]
listen = "127.0.0.1:$TAMIS_DISK"
[admin]
listen = "127.0.0.1:$TAMIS_DISK_ADMIN"
[cache]
max_bytes = 1048576
max_object_bytes = 65536
status_header = false
disk_dir = "$work/tcache"
max_disk_bytes = 268435456
[log]
access = false
[upstream]
user_agent = "tamis-bench (+https://operator.test/)"

$(disk_route)
TOML

# The wrk script of case h: DISK_TILES tile paths, round-robin.
cat >"$work/disk.lua" <<LUA
local n, i = $DISK_TILES, 0
request = function()
  i = i % n + 1
  return wrk.format("GET", "/d/14/" .. (i % 128) .. "/" .. math.floor(i / 128) .. ".png")
end
LUA

# ---------------------------------------------------------------------------------------------
# Start everything.
taskset -c 1 nginx -c "$work/origin.conf" -p "$work" 2>>"$work/origin-error.log" &
origin_pid=$!
pids+=($origin_pid)
taskset -c 1 python3 "$work/slow.py" "$SLOW" "$SLOW_MS" 2>"$work/slow.log" &
slow_pid=$!
pids+=($slow_pid)
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" 2>>"$work/nginx-error.log" &
nginx_pid=$!
pids+=($nginx_pid)
# One thread pool (one core); threads pre-started so no request waits for one, and room for
# the 1000-client burst of case e. -j none: no privilege separation (we may run as root).
taskset -c 0 varnishd -F -j none -n "$work/varnish" -a "127.0.0.1:$VARNISH" \
  -f "$work/default.vcl" -s malloc,256M \
  -p thread_pools=1 -p thread_pool_min=200 -p thread_pool_max=2000 \
  -p thread_queue_limit=2000 >"$work/varnish.log" 2>&1 &
varnish_pid=$!
pids+=($varnish_pid)
(cd "$work" && TOKIO_WORKER_THREADS=1 exec taskset -c 0 "$TAMIS_BIN" --config tamis.toml) \
  >"$work/tamis.log" 2>&1 &
tamis_pid=$!
pids+=($tamis_pid)
(cd "$work" && TOKIO_WORKER_THREADS=1 exec taskset -c 0 "$TAMIS_BIN" --config tamis-disk.toml) \
  >"$work/tamis-disk.log" 2>&1 &
tamis_disk_pid=$!
pids+=($tamis_disk_pid)

wait_up() { # URL
  for _ in $(seq 200); do
    curl -sk -o /dev/null "$1" && return 0
    sleep 0.05
  done
  echo "not answering: $1" >&2
  for f in "$work"/*.log; do echo "--- $f" >&2; tail -5 "$f" >&2; done
  exit 1
}
wait_up "http://127.0.0.1:$ORIGIN/__status"
# hyper alone loads its copies from the origin when it starts: after the origin is up.
TOKIO_WORKER_THREADS=1 taskset -c 0 "$HYPER_BIN" "127.0.0.1:$HYPER" "http://127.0.0.1:$ORIGIN" \
  /s/tile.png /s/style.css /s/font.woff2 >"$work/hyper.log" 2>&1 &
hyper_pid=$!
pids+=($hyper_pid)
wait_up "http://127.0.0.1:$SLOW/__count/x"
wait_up "http://127.0.0.1:$NGINX/s/style.css"
wait_up "http://127.0.0.1:$VARNISH/s/style.css"
wait_up "http://127.0.0.1:$TAMIS/s/style.css"
wait_up "https://127.0.0.1:$TAMIS_TLS/s/style.css"
wait_up "http://127.0.0.1:$TAMIS_DISK_ADMIN/healthz"
wait_up "http://127.0.0.1:$HYPER/s/style.css"
# nginx's children: the worker, the cache manager, and a cache loader that exits after a minute.
nginx_worker=$(pgrep -P "$nginx_pid" -f "worker process" | head -1)
varnish_child=$(pgrep -P "$varnish_pid" | head -1)
[ -n "$nginx_worker" ] && [ -n "$varnish_child" ] || { echo "no nginx worker or varnish child" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Measurement helpers.
cpu_ticks() { # PIDS... -> utime+stime summed, then utime alone, in clock ticks
  local t=0 u=0 p v w
  for p in "$@"; do
    read -r v w < <(awk '{sub(/^.*\) /, ""); print $12 + $13, $12}' "/proc/$p/stat" 2>/dev/null || echo 0 0)
    t=$((t + ${v:-0}))
    u=$((u + ${w:-0}))
  done
  echo "$t $u"
}
ours1=0
core1_ours() { # sets ours1: ticks used on core 1 by what we run there (load tools + origins)
  local kids
  times >"$work/times"   # in this shell: in a pipe or $() it would report a subshell's
  kids=$(awk -v c="$CLK" 'NR == 2 {
    n = 0
    for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); n += t[1] * 60 + t[2] }
    printf "%d", n * c }' "$work/times")
  local origins
  # shellcheck disable=SC2046
  read -r origins _ < <(cpu_ticks "$origin_pid" $(pgrep -P "$origin_pid") "$slow_pid")
  ours1=$((kids + origins))
}
core_busy() { # CPU -> non-idle ticks of that core (user nice system irq softirq steal)
  awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}
wait_idle() { # with WAIT_IDLE=N: wait up to N s for a second in which the machine is idle
  [ "${WAIT_IDLE:-0}" -gt 0 ] || return 0
  local deadline=$((SECONDS + WAIT_IDLE)) a b
  while [ $SECONDS -lt "$deadline" ]; do
    a=$(awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat)
    sleep 1
    b=$(awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat)
    # under 5 % of one core in that second (our idle servers use ~0)
    [ $((b - a)) -le $((CLK / 20)) ] && return 0
  done
  echo "  (machine still busy after ${WAIT_IDLE} s: measuring anyway)" >&2
}
pids_of() { # server -> all its processes
  case $1 in
    nginx) echo "$nginx_pid" $(pgrep -P "$nginx_pid") ;;
    varnish) echo "$varnish_pid $varnish_child" ;;
    tamis-disk) echo "$tamis_disk_pid" ;;
    tamis*) echo "$tamis_pid" ;;
    hyper) echo "$hyper_pid" ;;
  esac
}
rss_pid() { # server -> the process whose peak RSS is reported
  case $1 in
    nginx) echo "$nginx_worker" ;;
    varnish) echo "$varnish_child" ;;
    tamis-disk) echo "$tamis_disk_pid" ;;
    tamis*) echo "$tamis_pid" ;;
    hyper) echo "$hyper_pid" ;;
  esac
}
origin_count() { curl -s "http://127.0.0.1:$ORIGIN/__status" | awk '/^ [0-9]/ {print $3}'; }
port_of() { # server tls?
  if [ -n "${2:-}" ]; then
    case $1 in nginx) echo "$NGINX_TLS" ;; tamis*) echo "$TAMIS_TLS" ;; esac
    return
  fi
  case $1 in
    nginx) echo "$NGINX" ;;
    varnish) echo "$VARNISH" ;;
    tamis-disk) echo "$TAMIS_DISK" ;;
    tamis*) echo "$TAMIS" ;;
    hyper) echo "$HYPER" ;;
  esac
}
to_ms() { # wrk latency such as 812.00us, 1.23ms, 1.01s -> ms
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
    printf "%.2f", n }'
}

CLK=$(getconf CLK_TCK)
rows=()      # case|server|rps|p50|p99|errors|cpu_s|cpu_us_per_req|busy|rss_mib|origin
declare -A RPS FETCHED

# measure CASE SERVER KIND URL [EXTRA]: KIND is wrk, h2 or burst.
measure() {
  local case=$1 server=$2 kind=$3 url=$4 extra=${5:-}
  local procs rpid before_cpu after_cpu before_user after_user before_origin out rps p50 p99 errs
  local reqs t0 t1 c0a c0b
  local c1a c1b o1a o1b
  wait_idle
  procs=$(pids_of "$server")
  rpid=$(rss_pid "$server")
  echo 5 >"/proc/$rpid/clear_refs" 2>/dev/null || true
  before_origin=$(origin_count)
  # shellcheck disable=SC2086
  read -r before_cpu before_user < <(cpu_ticks $procs)
  c0a=$(core_busy 0)
  c1a=$(core_busy 1)
  core1_ours
  o1a=$ours1
  t0=$(date +%s.%N)
  case $kind in
    wrk)
      out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency $extra "$url")
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
      p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      errs=$(echo "$out" | awk '/Non-2xx/ {n += $NF} /Socket errors/ {
        for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i + 0 } END {print n + 0}')
      ;;
    h2)
      rm -f "$work/h2.log"
      out=$(taskset -c 1 h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D"$DURATION" \
        --log-file="$work/h2.log" "$url")
      rps=$(echo "$out" | awk '/^finished in/ {print $4}')
      reqs=$(echo "$out" | awk '/^requests:/ {print $8}')
      errs=$(echo "$out" | awk '/^requests:/ {n += $10 + $12}
        /^status codes:/ {n += $7 + $9} END {print n + 0}')
      read -r p50 p99 < <(awk -F'\t' '{print $3}' "$work/h2.log" | sort -n | awk '
        {v[NR] = $1} END {
          if (NR == 0) {print "0 0"; exit}
          i = int(NR * 0.50); if (i < 1) i = 1; j = int(NR * 0.99); if (j < 1) j = 1
          printf "%.2f %.2f\n", v[i] / 1000, v[j] / 1000 }')
      ;;
    burst)
      out=$(taskset -c 1 python3 "$work/burst.py" 127.0.0.1 "$(port_of "$server")" "$url" \
        "$COLD_CLIENTS")
      rps=$(echo "$out" | sed -n 's/.*rps=\([0-9.]*\).*/\1/p')
      p50=$(echo "$out" | sed -n 's/.*p50=\([0-9.]*\).*/\1/p')
      p99=$(echo "$out" | sed -n 's/.*p99=\([0-9.]*\).*/\1/p')
      errs=$(echo "$out" | sed -n 's/.*errors=\([0-9]*\).*/\1/p')
      reqs=$COLD_CLIENTS
      ;;
  esac
  t1=$(date +%s.%N)
  [ "${VERBOSE:-0}" = 1 ] && echo "$out" | sed 's/^/    | /'
  # shellcheck disable=SC2086
  read -r after_cpu after_user < <(cpu_ticks $procs)
  c0b=$(core_busy 0)
  c1b=$(core_busy 1)
  core1_ours
  o1b=$ours1
  local fetched
  if [ "$kind" = burst ]; then
    fetched=$(curl -s "http://127.0.0.1:$SLOW/__count$url")
  else
    fetched=$(($(origin_count) - before_origin - 1))
  fi
  local rss cpu per user busy other other1
  rss=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$rpid/status")
  cpu=$(awk -v a="$before_cpu" -v b="$after_cpu" -v c="$CLK" 'BEGIN {printf "%.2f", (b - a) / c}')
  per=$(awk -v s="$cpu" -v n="${reqs:-0}" 'BEGIN {if (n > 0) printf "%.1f", s * 1e6 / n; else print "-"}')
  # Its user-space part: the kernel's (socket and file copies, system calls) is most of a hit's.
  user=$(awk -v a="$before_user" -v b="$after_user" -v c="$CLK" -v n="${reqs:-0}" \
    'BEGIN {if (n > 0) printf "%.1f", (b - a) / c * 1e6 / n; else print "-"}')
  busy=$(awk -v s="$cpu" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", 100 * s / (b - a)}')
  # Core 0 time not spent in the server: other tenants, steal, interrupts (noise indicator).
  other=$(awk -v x="$c0a" -v y="$c0b" -v s="$cpu" -v c="$CLK" -v a="$t0" -v b="$t1" \
    'BEGIN {o = 100 * ((y - x) / c - s) / (b - a); if (o < 0) o = 0; printf "%.0f", o}')
  # The same on core 1, less the load tool and the origins.
  other1=$(awk -v x="$c1a" -v y="$c1b" -v u="$o1a" -v v="$o1b" -v c="$CLK" -v a="$t0" -v b="$t1" \
    'BEGIN {o = 100 * ((y - x) - (v - u)) / c / (b - a); if (o < 0) o = 0; printf "%.0f", o}')
  rps=$(printf "%.0f" "${rps:-0}")
  RPS[$case,$server]=$rps
  FETCHED[$case,$server]=$fetched
  rows+=("$case|$server|$rps|$p50|$p99|$errs|$cpu|$per|$user|$busy|$other/$other1|$rss|$fetched")
  printf "  %-16s %9s req/s  p50 %7s ms  p99 %7s ms  errors %s  cpu %6s s (%s µs/req, user %s; core0 %s%%)  other core0/1 %s/%s%%  rss %s MiB  origin %s\n" \
    "$server" "$rps" "$p50" "$p99" "$errs" "$cpu" "$per" "$user" "$busy" "$other" "$other1" "$rss" "$fetched"
}

check_get() { # URL expected-bytes: fetch twice (fill, then a hit), check status and size
  local got
  curl -sk -o /dev/null "$1"
  got=$(curl -sk -o /dev/null -w "%{http_code} %{size_download}" "$1")
  [ "$got" = "200 $2" ] || { echo "  unexpected answer from $1: $got (want 200 $2)" >&2; exit 1; }
}

describe() {
  case $1 in
    a) echo "cached 20 KB tile, HTTP/1.1" ;;
    b) echo "cached 1 KB CSS, HTTP/1.1" ;;
    c) echo "cached 100 KB woff2, HTTP/1.1" ;;
    d) echo "uncached 1 KB JSON POST forward" ;;
    e) echo "$COLD_CLIENTS concurrent GETs on one cold key, origin ${SLOW_MS} ms" ;;
    f) echo "cached 20 KB tile, HTTPS HTTP/1.1" ;;
    g) echo "cached 20 KB tile, HTTP/2 (TLS), $H2_STREAMS streams/conn" ;;
    h) echo "cached 20 KB tiles, $DISK_TILES URLs round-robin: nginx disk cache, tamis memory, tamis-disk disk tier" ;;
  esac
}

cached_case() { # case path bytes tls?
  local scheme=http
  [ -n "${4:-}" ] && scheme=https
  local servers="nginx varnish tamis hyper"
  [ -n "${4:-}" ] && servers="nginx tamis"
  for s in $servers; do
    local url="$scheme://127.0.0.1:$(port_of "$s" "${4:-}")$2"
    check_get "$url" "$3"
    if [ "${4:-}" = h2 ]; then measure "$1" "$s" h2 "$url"; else measure "$1" "$s" wrk "$url"; fi
  done
}

disk_metric() { # NAME{LABELS prefix -> the sum of tamis-disk's matching series
  curl -s "http://127.0.0.1:$TAMIS_DISK_ADMIN/metrics" |
    awk -v p="$1" 'index($0, p) == 1 {n += $NF} END {printf "%d", n}'
}
disk_case() {
  local s i url
  # One request per URL (curl reusing its connection): every server holds the whole set.
  for i in $(seq 1 "$DISK_TILES"); do
    echo "url = \"/d/14/$((i % 128))/$((i / 128)).png\""
    echo "output = \"/dev/null\""
  done >"$work/disk-urls"
  for s in nginx tamis tamis-disk; do
    sed "s#^url = \"#url = \"http://127.0.0.1:$(port_of "$s")#" "$work/disk-urls" >"$work/disk-urls-$s"
    curl -s -K "$work/disk-urls-$s"
    check_get "http://127.0.0.1:$(port_of "$s")/d/14/1/0.png" 20480
  done
  # tamis-disk writes in the background: wait until the whole set is on disk.
  for _ in $(seq 100); do
    [ "$(disk_metric tamis_cache_disk_entries)" -ge "$DISK_TILES" ] && break
    sleep 0.1
  done
  echo "  tamis-disk: $(disk_metric tamis_cache_disk_entries) objects on disk, memory tier 1 MiB"
  local disk0 mem0 disk1 mem1
  for s in nginx tamis tamis-disk; do
    disk0=$(disk_metric 'tamis_cache_lookups_total{result="disk_hit"')
    mem0=$(disk_metric 'tamis_cache_lookups_total{result="hit"')
    measure h "$s" wrk "http://127.0.0.1:$(port_of "$s")/d/" "-s $work/disk.lua"
  done
  disk1=$(disk_metric 'tamis_cache_lookups_total{result="disk_hit"')
  mem1=$(disk_metric 'tamis_cache_lookups_total{result="hit"')
  DISK_SHARE=$(awk -v d=$((disk1 - disk0)) -v m=$((mem1 - mem0)) \
    'BEGIN {if (d + m > 0) printf "%.1f", 100 * d / (d + m); else print "-"}')
  echo "  tamis-disk: $DISK_SHARE % of its hits during the run came from disk ($((disk1 - disk0)) disk, $((mem1 - mem0)) memory)"
}

if [ -n "${TAMIS_REV:-}" ]; then
  rev=$TAMIS_REV
elif [ "$TAMIS_BIN" = "$(realpath target/release/tamis 2>/dev/null)" ]; then
  rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    rev="$rev + uncommitted changes"
  fi
else
  rev="$TAMIS_BIN (set TAMIS_REV to name its revision)"
fi
nginx_v=$(nginx -v 2>&1 | sed 's/.*\///')
varnish_v=$(varnishd -V 2>&1 | sed -n 's/.*(varnish-\([0-9.]*\).*/\1/p')
tls_of() { # port -> negotiated TLS version and cipher with an HTTP/1.1 ALPN
  openssl s_client -connect "127.0.0.1:$1" -alpn http/1.1 </dev/null 2>/dev/null |
    awk '/^New, / {gsub(/,/, ""); print $2, $5; exit}'
}
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
echo "tamis $rev, nginx $nginx_v, Varnish $varnish_v; DURATION=${DURATION}s CONNS=$CONNS"
echo "load before: $(uptime | sed 's/.*load average: //')"
echo "TLS: nginx $(tls_of "$NGINX_TLS"), tamis $(tls_of "$TAMIS_TLS")"

for c in $CASES; do
  echo "== $c: $(describe "$c")"
  case $c in
    a) cached_case a /s/tile.png 20480 ;;
    b) cached_case b /s/style.css 1024 ;;
    c) cached_case c /s/font.woff2 102400 ;;
    d)
      for s in nginx varnish tamis hyper; do
        measure d "$s" wrk "http://127.0.0.1:$(port_of "$s")/post/event" "-s $work/post.lua"
      done
      got=$(curl -s -o /dev/null -w "%{http_code}" -H "Content-Type: application/json" \
        --data-binary "@$work/event.json" "http://127.0.0.1:$TAMIS/p/api/event")
      [ "$got" = 202 ] || { echo "  tamis plausible route answered $got" >&2; exit 1; }
      measure d tamis-plausible wrk "http://127.0.0.1:$TAMIS/p/api/event" "-s $work/post.lua"
      ;;
    e)
      for s in nginx varnish tamis; do
        measure e "$s" burst "/slow/cold-$s-$RANDOM.bin"
      done
      ;;
    f) cached_case f /s/tile.png 20480 tls ;;
    g) cached_case g /s/tile.png 20480 h2 ;;
    h) disk_case ;;
    *) echo "unknown case $c" >&2; exit 1 ;;
  esac
done
echo "load after: $(uptime | sed 's/.*load average: //')"

# ---------------------------------------------------------------------------------------------
# Markdown.
ratio() { # a b -> a/b or -
  awk -v a="${1:-}" -v b="${2:-}" 'BEGIN {if (a > 0 && b > 0) printf "%.2f", a / b; else print "—"}'
}
echo
echo "| case | server | req/s | p50 ms | p99 ms | errors | CPU s | CPU µs/req | of which user | core 0 busy | others on core 0/1 | peak RSS MiB | origin requests |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for r in "${rows[@]}"; do
  IFS='|' read -r c s rps p50 p99 errs cpu per user busy other rss fetched <<<"$r"
  echo "| $c | $s | $rps | $p50 | $p99 | $errs | $cpu | $per | $user | $busy % | $other % | $rss | $fetched |"
done
echo
echo "| case | nginx $nginx_v req/s | Varnish $varnish_v req/s | tamis req/s | tamis/nginx | tamis/Varnish | hyper alone req/s | tamis/hyper |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for c in $CASES; do
  tm=${RPS[$c,tamis]:-}
  vn=${RPS[$c,varnish]:-}
  if [ "$c" = e ]; then
    # req/s of a single burst means little; the origin count is what case e is about.
    echo "| $c: $(describe "$c"), origin fetches | ${FETCHED[$c,nginx]:-} | ${FETCHED[$c,varnish]:-} | ${FETCHED[$c,tamis]:-} | — | — | — | — |"
    continue
  fi
  hy=${RPS[$c,hyper]:-}
  novarnish="no TLS"
  [ "$c" = h ] && novarnish="memory only"
  echo "| $c: $(describe "$c") | ${RPS[$c,nginx]:-} | ${vn:-$novarnish} | $tm | $(ratio "$tm" "${RPS[$c,nginx]:-}") | $(ratio "$tm" "$vn") | ${hy:-—} | $(ratio "$tm" "$hy") |"
  if [ -n "${RPS[$c,tamis-disk]:-}" ]; then
    td=${RPS[$c,tamis-disk]}
    echo "| $c: same, tamis-disk from its disk tier (${DISK_SHARE:-?} % of hits from disk) | ${RPS[$c,nginx]:-} | — | $td | $(ratio "$td" "${RPS[$c,nginx]:-}") | — | | |"
  fi
  if [ -n "${RPS[$c,tamis-plausible]:-}" ]; then
    tp=${RPS[$c,tamis-plausible]}
    echo "| $c: same, tamis through its Plausible scrubber | ${RPS[$c,nginx]:-} | ${vn:-} | $tp | $(ratio "$tp" "${RPS[$c,nginx]:-}") | $(ratio "$tp" "$vn") | | |"
  fi
done
echo
cat <<'NOTE'
Each server under test alone on core 0; wrk / h2load / the burst client and both origins on
core 1. "core 0 busy": the server's CPU time over the run time. "others on core 0/1": time
those cores spent on anything but the server (core 0) or the load tool and origins (core 1):
other tenants, steal, softirq; high = a noisy run. Server well below 100 % with little
"other": core 1 (load generator + origin) was the limit, so compare CPU µs/req. "of which
user": the server's own code (user space); the rest is the kernel's on its behalf (socket and
file copies, system calls), much the same for every server on a given case. Peak
RSS: tamis, the nginx worker (nginx's cache lives in the page cache, not counted), the Varnish
child (malloc 256M, one thread pool, 200-2000 threads). Varnish has no TLS: cases f and g not
measured for it, nor case h (no disk). Case e: "origin requests" is the number of origin
fetches. Case h: tamis-disk's memory tier holds ~2 % of the URLs, so its hits are disk hits
(file read on the worker, checksum verified, not promoted: round-robin over 50 x memory); nginx reads its disk
cache too; both from the page cache (the files were just written). "hyper alone"
(benches/bare.rs, one Tokio worker): hyper answering from memory (a, b, c) or forwarding over
one kept-alive connection per visitor (d), with none of tamis's work: the ceiling for tamis.
NOTE

failed=0
for r in "${rows[@]}"; do
  IFS='|' read -r c s rps p50 p99 errs cpu per user busy other rss fetched <<<"$r"
  if [ "$errs" != 0 ]; then
    echo "$( [ "${s%%-*}" = tamis ] && echo FAIL || echo warning): case $c, $s: $errs errors" >&2
    [ "${s%%-*}" = tamis ] && failed=1
  fi
  if [ "$c" = h ] && [ "$s" = tamis-disk ] && [ "$fetched" != 0 ]; then
    echo "FAIL: case h, tamis-disk reached the origin $fetched times: its disk tier did not answer" >&2
    failed=1
  fi
  if [ "$c" = e ] && [ "$fetched" != 1 ]; then
    echo "$( [ "$s" = tamis ] && echo FAIL || echo note): case e, $s: $fetched origin fetches" >&2
    [ "$s" = tamis ] && failed=1
  fi
done
if [ -n "${DISK_SHARE:-}" ] && awk -v d="$DISK_SHARE" 'BEGIN {exit !(d == "-" || d < 50)}'; then
  echo "FAIL: case h, only ${DISK_SHARE} % of tamis-disk's hits came from disk: not a disk-hit measurement" >&2
  failed=1
fi
exit "$failed"
