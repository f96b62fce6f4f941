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
