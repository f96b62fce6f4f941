#!/usr/bin/env bash
# Cached 20 KB hit: tamis vs nginx proxy_cache, each server pinned to core 0 with one worker,
# wrk pinned to core 1. Loopback only. Needs: nginx (nginx-light), wrk, taskset.
#   bash benches/hit-20k.sh            # 10 s per run
#   DURATION=3 bash benches/hit-20k.sh # quicker
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
ORIGIN=18001 NGINX=18002 TAMIS=18003
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true; rm -rf "$work"' EXIT

for tool in nginx wrk taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install nginx-light wrk util-linux)"; exit 1; }
done
cargo build --release --quiet

mkdir -p "$work/www" "$work/cache"
# nginx workers drop to an unprivileged user when started as root.
chmod 755 "$work" "$work/www"; chmod 777 "$work/cache"
head -c 20480 /dev/urandom > "$work/www/tile.png"; chmod 644 "$work/www/tile.png"
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  proxy_cache_path $work/cache keys_zone=tiles:10m max_size=256m;
  server {   # the origin
    listen 127.0.0.1:$ORIGIN;
    root $work/www;
    location / { add_header Cache-Control "public, max-age=3600"; }
  }
  server {   # the peer: nginx proxy_cache
    listen 127.0.0.1:$NGINX;
    location /t/ {
      proxy_pass http://127.0.0.1:$ORIGIN/;
      proxy_cache tiles;
      proxy_cache_lock on;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work"

cat > "$work/tamis.toml" <<TOML
[server]
listen = "127.0.0.1:$TAMIS"
[cache]
status_header = false
[log]
access = false
[[route]]
name = "tiles"
kind = "static"
prefix = "/t/"
upstream = "http://127.0.0.1:$ORIGIN/"
TOML
TOKIO_WORKER_THREADS=1 taskset -c 0 target/release/tamis --config "$work/tamis.toml" 2>"$work/tamis.log" &
for port in $NGINX $TAMIS; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/t/tile.png" && break; sleep 0.05; done
  curl -sf -o /dev/null "http://127.0.0.1:$port/t/tile.png"   # warm the cache
done

run() {
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$1/t/tile.png"
}
echo "== nginx $(nginx -v 2>&1 | sed 's/.*\///') proxy_cache, 1 worker on core 0"
n=$(run $NGINX); echo "$n" | grep -E "Requests/sec|Latency|99%|50%"
echo "== tamis $(git rev-parse --short HEAD 2>/dev/null || echo dev), 1 worker thread on core 0"
t=$(run $TAMIS); echo "$t" | grep -E "Requests/sec|Latency|99%|50%"
rn=$(echo "$n" | awk '/Requests\/sec/ {print $2}'); rt=$(echo "$t" | awk '/Requests\/sec/ {print $2}')
echo "tamis/nginx requests/s: $(awk -v a="$rt" -v b="$rn" 'BEGIN {printf "%.2f", a/b}')"
