# Shared by the bench scripts (sourced from the repository root): the binaries under test, and
# a scratch directory whose processes are stopped when the script exits.

# Sets TAMIS_BIN (built with `cargo build --release` unless given) and HYPER_BIN, "hyper
# alone" (benches/bare.rs): hyper answering from memory or forwarding, nothing else.
bench_binaries() {
  if [ -z "${TAMIS_BIN:-}" ]; then
    cargo build --release --quiet --bin tamis
    TAMIS_BIN=target/release/tamis
  fi
  TAMIS_BIN=$(realpath "$TAMIS_BIN")
  HYPER_BIN=$(cargo bench --quiet --bench bare --no-run --message-format=json 2>/dev/null |
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
