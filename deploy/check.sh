#!/usr/bin/env bash
# deploy/check.sh: every offline check of the deploy kit, in one run. Nothing leaves the
# machine: the servers it starts (tamis, nginx, Caddy, a recording stub) listen on loopback.
#
#   bash deploy/check.sh
#
# Installs what is missing (Debian: prometheus (promtool), nginx-light, caddy, systemd, openssl,
# strace, redis-server; PyPI: kubernetes-validate, the prometheus-operator CRD models, PyYAML) and builds the
# tamis binary (`cargo build --locked --bin tamis`: a no-op after `cargo test`). Stops at the first
# failure with a FAIL line; ends with "deploy/check.sh: all N checks passed".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEPLOY=$ROOT/deploy
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
STARTED=$SECONDS
STEPS=0

step() {
  STEPS=$((STEPS + 1))
  printf '\n== %s\n' "$*"
}
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

# ---- tools -------------------------------------------------------------------------------
apt_missing=()
command -v promtool >/dev/null || apt_missing+=(prometheus)
command -v nginx >/dev/null || apt_missing+=(nginx-light)
command -v caddy >/dev/null || apt_missing+=(caddy)
command -v systemd-analyze >/dev/null || apt_missing+=(systemd)
command -v openssl >/dev/null || apt_missing+=(openssl)
command -v strace >/dev/null || apt_missing+=(strace)
command -v redis-server >/dev/null || apt_missing+=(redis-server)
if ((${#apt_missing[@]})); then
  echo "installing (Debian): ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi
if ! python3 -c 'import yaml, kubernetes_validate, cloudcoil.models.prometheus_operator' 2>/dev/null; then
  echo "installing (PyPI): kubernetes-validate, cloudcoil-models-prometheus-operator, PyYAML"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    'kubernetes-validate>=1.31' 'cloudcoil-models-prometheus-operator>=0.80' PyYAML
fi
KV=(python3 -m kubernetes_validate)
"${KV[@]}" --version >/dev/null 2>&1 || KV=(kubernetes-validate)

step "tamis binary (cargo build --locked --bin tamis)"
cargo build --locked --quiet --bin tamis
TAMIS=${CARGO_TARGET_DIR:-$ROOT/target}/debug/tamis
[[ -x $TAMIS ]] || fail "no $TAMIS after cargo build"
echo "ok: $TAMIS"

# ---- systemd -----------------------------------------------------------------------------
step "systemd: systemd-analyze verify + security (deploy/systemd/tamis.service)"
# verify needs ExecStart's binary to exist: check a copy of the unit that points at an
# executable stub in a temporary directory, the rest of the unit unchanged.
mkdir "$TMP/systemd"
printf '#!/bin/sh\nexit 0\n' >"$TMP/systemd/tamis"
chmod +x "$TMP/systemd/tamis"
grep -q '^ExecStart=/usr/bin/tamis ' "$DEPLOY/systemd/tamis.service" ||
  fail "tamis.service: ExecStart is not /usr/bin/tamis (where the Debian package puts it)"
sed "s#/usr/bin/tamis#$TMP/systemd/tamis#" "$DEPLOY/systemd/tamis.service" >"$TMP/systemd/tamis.service"
# verify exits 0 on a directive it cannot parse (it only logs "ignoring"): any output fails.
out=$(systemd-analyze verify "$TMP/systemd/tamis.service" 2>&1) || fail "systemd-analyze verify: $out"
[[ -z $out ]] || fail "systemd-analyze verify complained:
$out"
echo "ok: systemd-analyze verify: no complaint"
security=$(systemd-analyze security --offline=yes --threshold=20 "$TMP/systemd/tamis.service" 2>&1) ||
  fail "systemd-analyze security: exposure above 2.0:
$security"
echo "ok: systemd-analyze security: ${security##*$'\n'}"
for d in NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes PrivateDevices=yes \
  ProtectKernelTunables=yes ProtectKernelModules=yes ProtectKernelLogs=yes DynamicUser=yes User=tamis \
  CapabilityBoundingSet=CAP_NET_BIND_SERVICE AmbientCapabilities=CAP_NET_BIND_SERVICE \
  'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' MemoryDenyWriteExecute=yes \
  SystemCallFilter=@system-service SystemCallArchitectures=native LockPersonality=yes \
  RestrictNamespaces=yes Restart=on-failure 'ExecReload=/bin/kill -HUP $MAINPID' \
  CacheDirectory=tamis CacheDirectoryMode=0700; do
  grep -qxF "$d" "$DEPLOY/systemd/tamis.service" || fail "tamis.service: no $d"
done
grep -q '^LimitNOFILE=' "$DEPLOY/systemd/tamis.service" || fail "tamis.service: no LimitNOFILE"
echo "ok: the hardening directives are all there"

step "systemd: the unit's commands for real (ExecStart, ExecReload, stop) + container HEALTHCHECK probe"
python3 "$DEPLOY/check.py" systemd-smoke "$TAMIS"

# ---- configs, container ------------------------------------------------------------------
step "tamis check on the container config and the Kubernetes ConfigMap"
python3 "$DEPLOY/check.py" configs "$TAMIS"

step "container: Dockerfile and .dockerignore (static: no Docker engine here)"
python3 "$DEPLOY/check.py" dockerfile

# ---- Kubernetes --------------------------------------------------------------------------
step "kubernetes: kubernetes-validate --strict (built-in kinds), oldest and newest schemas"
builtin=()
for f in "$DEPLOY"/kubernetes/*.yaml; do
  grep -q '^apiVersion: monitoring.coreos.com/' "$f" || builtin+=("$f")
done
((${#builtin[@]} >= 7)) || fail "expected at least 7 built-in manifests, found ${#builtin[@]}"
for k in 1.25.0 ""; do
  out=$("${KV[@]}" --strict ${k:+-k "$k"} "${builtin[@]}" 2>&1) || fail "kubernetes-validate ${k:-(default)}:
$out"
  if grep -qv '^INFO .* passed for resource' <<<"$out"; then
    fail "kubernetes-validate ${k:-(default)}: not everything passed:
$out"
  fi
  n=$(grep -c 'passed for resource' <<<"$out")
  printf 'ok: kubernetes-validate --strict, Kubernetes %s: %d resources passed (%s)\n' \
    "$(grep -o 'against version [0-9.]*' <<<"$out" | head -1 | cut -d' ' -f3)" "$n" \
    "$(sed -E 's#^INFO .*resource ([^ ]*) against.*#\1#' <<<"$out" | tr '\n' ' ' | sed 's/ $//')"
done

step "kubernetes: ServiceMonitor and PrometheusRule (CRDs) against the operator's models"
python3 "$DEPLOY/check.py" kubernetes

# ---- Valkey (the shared key store) --------------------------------------------------------
step "valkey: deploy/valkey/valkey.conf + users.acl.example in the real server (Debian's redis-server), tamis check against it"
mkdir "$TMP/valkey"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
password=check-password-$RANDOM$RANDOM
hash=$(printf '%s' "$password" | sha256sum | cut -d' ' -f1)
sed "s/#0\{64\}/#$hash/" "$DEPLOY/valkey/users.acl.example" >"$TMP/valkey/users.acl"
printf '%s' "$password" >"$TMP/valkey/password"
# The shipped file as it is, but plain TCP on a loopback port (no certificate here) and the
# ACL file above: every other line (no persistence, diskless replication, noeviction) applies.
redis-server "$DEPLOY/valkey/valkey.conf" --port "$port" --tls-port 0 --bind 127.0.0.1 \
  --dir "$TMP/valkey" --aclfile "$TMP/valkey/users.acl" >"$TMP/valkey/log" 2>&1 &
valkey_pid=$!
ask() { REDISCLI_AUTH=$password redis-cli -p "$port" --user tamis "$@" 2>&1; }
for _ in $(seq 50); do
  [[ $(ask PING) == PONG ]] && break
  sleep 0.1
done
[[ $(ask PING) == PONG ]] || fail "valkey did not start with the shipped config:
$(cat "$TMP/valkey/log")"
[[ $(ask CONFIG GET appendonly | tail -1) == no ]] || fail "valkey.conf: appendonly is not no"
[[ -z $(ask CONFIG GET save | tail -1) ]] || fail "valkey.conf: save is not empty"
[[ $(ask CONFIG GET repl-diskless-sync | tail -1) == yes ]] || fail "valkey.conf: replication is not diskless"
ask SET elsewhere x | grep -q NOPERM || fail "users.acl: tamis may write outside tamis:*"
ask FLUSHALL | grep -q NOPERM || fail "users.acl: tamis may run FLUSHALL"
redis-cli -p "$port" PING 2>&1 | grep -q NOAUTH || fail "users.acl: the default user is not off"
printf '[server]\nlisten = "127.0.0.1:0"\n[cluster]\nstore = "redis://tamis@127.0.0.1:%s"\nstore_password_file = "%s"\n[[route]]\nname = "ga"\nkind = "ga4"\nprefix = "/a/"\nupstream = "https://region1.google-analytics.com/"\n' \
  "$port" "$TMP/valkey/password" >"$TMP/valkey/tamis.toml"
out=$("$TAMIS" check --quiet --config "$TMP/valkey/tamis.toml" 2>&1) || fail "tamis check against the shipped valkey: $out"
grep -q 'persistence off' <<<"$out" || fail "tamis check did not find persistence off: $out"
if grep -qF "$password" <<<"$out"; then fail "tamis check printed the store password"; fi
kill "$valkey_pid"
wait "$valkey_pid" 2>/dev/null || true
echo "ok: the shipped Valkey config loads: no persistence, diskless replication; tamis confined to tamis:*; tamis check: persistence off"

# ---- nginx, Caddy ------------------------------------------------------------------------
step "front ends: nginx -t, caddy validate, and both for real in front of a recording stub"
python3 "$DEPLOY/check.py" frontends

step "front end + tamis: the client address and per-visitor rate limits (trusted_proxies)"
python3 "$DEPLOY/check.py" pairing "$TAMIS"

# ---- Prometheus, Grafana -----------------------------------------------------------------
step "prometheus: promtool check config / check rules / test rules"
(cd "$DEPLOY/prometheus" && promtool check config prometheus.yml) || fail "promtool check config"
(cd "$DEPLOY/prometheus" && promtool check rules tamis.rules.yml) || fail "promtool check rules"
(cd "$DEPLOY/prometheus" && promtool test rules tamis.rules.test.yml) || fail "promtool test rules"

step "grafana: tamis.json parses, its structure, every query's metrics and PromQL syntax"
python3 "$DEPLOY/check.py" metrics-names "$TMP/grafana-queries.yml"
promtool check rules "$TMP/grafana-queries.yml" >/dev/null || {
  promtool check rules "$TMP/grafana-queries.yml"
  fail "a dashboard query is not valid PromQL"
}
echo "ok: promtool parses every dashboard query"

printf '\ndeploy/check.sh: all %d checks passed in %ds\n' "$STEPS" "$((SECONDS - STARTED))"
