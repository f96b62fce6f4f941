# Shared by the bench scripts (sourced from the repository root): the binaries under test, and
# a scratch directory whose processes are stopped when the script exits.

# Sets TAMIS_BIN (built with `cargo build --release` unless given) and HYPER_BIN (unless
# given), "hyper alone" (benches/bare.rs): hyper answering from memory or forwarding, nothing
# else.
bench_binaries() {
  if [ -z "${TAMIS_BIN:-}" ]; then
    cargo build --release --quiet --bin tamis
    TAMIS_BIN=target/release/tamis
  fi
  TAMIS_BIN=$(realpath "$TAMIS_BIN")
  # HYPER_BIN given: that build of benches/bare.rs (no cargo run, e.g. while the tree is edited).
  [ -n "${HYPER_BIN:-}" ] && return
  # The release profile, as TAMIS_BIN's: one build of the library for both.
  HYPER_BIN=$(cargo bench --quiet --profile release --bench bare --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "bare" and m.get("executable"):
        print(m["executable"])')
  [ -x "$HYPER_BIN" ] || { echo "cannot build benches/bare.rs" >&2; exit 1; }
}

# Sets `work` (a scratch directory, removed on exit) and `pids` (processes stopped on exit).
bench_workdir() {
  work=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  # nginx workers drop to an unprivileged user when started as root.
  chmod 755 "$work"
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}

# Writes to $1 the Plausible-style pageview both peers.sh and instructions.sh send: 1 KB of
# JSON, padded with custom props (which tamis drops), and to $2 a wrk script POSTing it.
bench_plausible_event() {
  python3 - "$1" "$2" <<'PY'
import json, sys
ev = {"n": "pageview", "u": "https://blog.example/post/12?utm_source=newsletter&token=abc#c",
      "d": "blog.example", "r": "https://social.example/feed?u=alice", "w": 1280, "h": 0,
      "p": {}}
i = 0
while len(json.dumps(ev, separators=(",", ":"))) < 1024:
    ev["p"]["prop%d" % i] = "value-%d-%s" % (i, "x" * 20)
    i += 1
body = json.dumps(ev, separators=(",", ":"))
open(sys.argv[1], "w").write(body)
open(sys.argv[2], "w").write(
    'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n'
    % json.dumps(body))
PY
}

# Prints the tamis routes of cases a and d, so peers.sh and instructions.sh measure one config:
# the cached static route (/s/), the pass-through POST forward (/post/) and the Plausible
# scrubber (/p/), all in front of the origin on port $1.
bench_routes() {
  cat <<TOML
[[route]]
name = "static"
kind = "static"
prefix = "/s/"
upstream = "http://127.0.0.1:$1/s/"

[[route]]
name = "post"
kind = "static"
prefix = "/post/"
upstream = "http://127.0.0.1:$1/post/"
jurisdiction = "eu"
pass_through = true
cache = false

[[route]]
name = "plausible"
kind = "plausible"
prefix = "/p/"
upstream = "http://127.0.0.1:$1/p/"
jurisdiction = "eu"
TOML
}

# The origin of instructions.sh and ab.sh, in $work, port $1: nginx serving a 20 KB tile
# cacheable for an hour (/s/tile.png) and answering 202 "ok" to the POSTs of /post/ and /p/.
# Also writes $work/post.lua, the uncached 1 KB JSON POST of case d. Start it with
# bench_origin_start.
bench_origin() {
  mkdir -p "$work/www/s" "$work/logs"
  chmod 777 "$work/logs"
  head -c 20480 /dev/urandom >"$work/www/s/tile.png"
  cat >"$work/origin.conf" <<NGINX
daemon off;
worker_processes 1;
pid $work/origin.pid;
error_log $work/logs/origin-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/logs;
  server {
    listen 127.0.0.1:$1;
    location /s/ { root $work/www; add_header Cache-Control "public, max-age=3600"; }
    location /p/ { return 202 "ok"; }
    location /post/ { return 202 "ok"; }
  }
}
NGINX
  python3 - "$work/post.lua" <<'PY'
import json, sys
body = json.dumps({"n": "pageview", "u": "https://blog.example/post/12?" + "x" * 940, "d": "blog.example"})
open(sys.argv[1], "w").write(
    'wrk.method = "POST"\n'
    f"wrk.body = {json.dumps(body)}\n"
    'wrk.headers["Content-Type"] = "application/json"\n')
PY
}

# Starts the origin written by bench_origin (port $1), pinned to the cores in $2 (all if
# empty), and waits until it answers.
bench_origin_start() {
  ${2:+taskset -c "$2"} nginx -c "$work/origin.conf" -p "$work" 2>>"$work/logs/origin-error.log" &
  pids+=($!)
  for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$1/s/tile.png" && break; sleep 0.1; done
}

# Writes $work/tamis.toml: tamis on port $1 with the routes of bench_routes in front of the
# origin on port $2, no access log, no transparency page (instructions.sh, ab.sh).
bench_tamis_config() {
  cat >"$work/tamis.toml" <<TOML
[server]
listen = "127.0.0.1:$1"
[cache]
status_header = true
[log]
access = false
[transparency]
enabled = false

$(bench_routes "$2")
TOML
}
