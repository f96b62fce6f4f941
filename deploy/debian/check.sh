#!/usr/bin/env bash
# deploy/debian/check.sh: builds the Debian package, installs it with `dpkg -i` on this machine
# (root; CI's throwaway machine), and checks what it installed: files, modes, the conffile, the
# deploy examples the docs name (/usr/share/doc/tamis/examples/), the `tamis` user, the enabled unit; `tamis check` on the installed config (found by the default
# path); the installed binary, run as the tamis user, serving a loopback origin and stopping
# cleanly on SIGTERM. Purges the package at the end (the user stays, as Debian leaves them).
#
#   bash deploy/debian/check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
TMP=$(mktemp -d)
chmod 0755 "$TMP"
ORIGIN_PID= TAMIS_PID=
cleanup() {
  [ -n "$TAMIS_PID" ] && kill "$TAMIS_PID" 2>/dev/null || true
  [ -n "$ORIGIN_PID" ] && kill "$ORIGIN_PID" 2>/dev/null || true
  dpkg --purge tamis >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}
ok() { printf 'ok: %s\n' "$*"; }

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
for tool in adduser curl; do
  command -v "$tool" >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends adduser curl >/dev/null
  }
done

cargo deb --locked --quiet >/dev/null
deb=$(ls -t target/debian/tamis_*.deb | head -1)
ok "built $deb ($(du -h "$deb" | cut -f1))"

contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/tamis ./etc/tamis/tamis.toml ./usr/lib/systemd/system/tamis.service \
  ./usr/share/doc/tamis/copyright; do
  grep -q " $f\$" <<<"$contents" || fail "$f not in the package"
done
dpkg-deb --info "$deb" conffiles | grep -qx /etc/tamis/tamis.toml || fail "no conffile"
ok "package holds the binary, the config (a conffile), the unit, the copyright"

# The deploy examples deploy/README.md says the package installs, each identical to the repo's.
examples=(README.md nginx/tamis.conf caddy/Caddyfile prometheus/prometheus.yml
  prometheus/tamis.rules.yml prometheus/tamis.rules.test.yml grafana/tamis.json)
for f in "${examples[@]}"; do
  grep -q " ./usr/share/doc/tamis/examples/$f\$" <<<"$contents" || fail "examples/$f not in the package"
done
grep -q '/usr/share/doc/tamis/examples/' deploy/README.md || fail "deploy/README.md does not name the examples' path"
grep -q '/usr/lib/systemd/system/tamis.service' deploy/README.md ||
  fail "deploy/README.md does not name the unit's installed path"
ok "package holds the deploy examples the docs name (${#examples[@]} files under /usr/share/doc/tamis/examples/)"

dpkg -i "$deb" >/dev/null
getent passwd tamis >/dev/null || fail "no tamis user"
[ "$(stat -c '%U:%G %a' /etc/tamis/tamis.toml)" = "root:tamis 640" ] ||
  fail "/etc/tamis/tamis.toml is $(stat -c '%U:%G %a' /etc/tamis/tamis.toml)"
[ -L /etc/systemd/system/multi-user.target.wants/tamis.service ] || fail "unit not enabled"
version=$(/usr/bin/tamis --version)
[[ $version == "tamis $(grep -m1 '^version' Cargo.toml | cut -d'"' -f2) (revision "* ]] ||
  fail "tamis --version: $version"
ok "installed: $version, user tamis, config root:tamis 0640, unit enabled"
for f in "${examples[@]}"; do
  src=deploy/$f
  cmp -s "$src" "/usr/share/doc/tamis/examples/$f" || fail "/usr/share/doc/tamis/examples/$f differs from $src"
done
[ -f /usr/lib/systemd/system/tamis.service ] || fail "no /usr/lib/systemd/system/tamis.service"
ok "installed examples are the repo's deploy files; the unit is /usr/lib/systemd/system/tamis.service"

# `tamis check` with no --config, from a directory without config/: the installed one.
report=$(cd / && /usr/bin/tamis check 2>"$TMP/check.err") || fail "tamis check: $(cat "$TMP/check.err")"
grep -q '^/etc/tamis/tamis.toml: valid' <<<"$report" || fail "check read another file: ${report%%$'\n'*}"
grep -q 'reading /etc/tamis/tamis.toml' "$TMP/check.err" || fail "check did not say which file"
ok "tamis check on the installed config: ${report%%$'\n'*}"

# `check` is what the service sees (issue 31): root reads a salt made root-only, the tamis user
# could not, and root's `tamis check` on the installed config says so, unasked; then the service
# itself, as tamis, refuses that config, as check predicted; readable by group tamis, no warning.
cp -p /etc/tamis/tamis.toml "$TMP/installed.toml"
head -c 32 /dev/urandom >/etc/tamis/check.salt
chmod 0600 /etc/tamis/check.salt
printf '\n[[route]]\nname = "stats"\nkind = "umami"\nprefix = "/stats/"\nupstream = "https://umami.example.eu/"\nsalt_file = "check.salt"\n' \
  >>/etc/tamis/tamis.toml
report=$(cd / && /usr/bin/tamis check 2>/dev/null) || fail "tamis check with a root-only salt: refused"
grep -q "route \"stats\".salt_file: /etc/tamis/check.salt: not readable by the service's user tamis" \
  <<<"$report" || fail "check did not say the salt is unreadable by tamis: $(grep -m3 warning <<<"$report")"
if setpriv --reuid=tamis --regid=tamis --init-groups /usr/bin/tamis check -c /etc/tamis/tamis.toml \
  >/dev/null 2>"$TMP/as-tamis.err"; then
  fail "as tamis, a root-only salt was read"
fi
grep -q 'salt_file' "$TMP/as-tamis.err" || fail "as tamis: $(cat "$TMP/as-tamis.err")"
chgrp tamis /etc/tamis/check.salt && chmod 0640 /etc/tamis/check.salt
report=$(cd / && /usr/bin/tamis check 2>/dev/null) || fail "tamis check with a group-readable salt"
! grep -q 'not readable' <<<"$report" || fail "a salt tamis can read was reported: $report"
cp -p "$TMP/installed.toml" /etc/tamis/tamis.toml && rm /etc/tamis/check.salt
ok "tamis check as root names a file the tamis user could not read; as tamis, the load fails alike"

# The installed binary, as the tamis user, in front of a loopback origin.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mkdir "$TMP/www" && echo "from the origin" >"$TMP/www/hello.txt"
origin=$(free_port) port=$(free_port)
python3 -m http.server "$origin" --bind 127.0.0.1 --directory "$TMP/www" >/dev/null 2>&1 &
ORIGIN_PID=$!
cat >"$TMP/tamis.toml" <<TOML
[server]
listen = "127.0.0.1:$port"

[[route]]
name = "origin"
kind = "static"
prefix = "/o/"
upstream = "http://127.0.0.1:$origin/"
TOML
chmod 0644 "$TMP/tamis.toml"
setpriv --reuid=tamis --regid=tamis --init-groups /usr/bin/tamis -c "$TMP/tamis.toml" 2>"$TMP/tamis.log" &
TAMIS_PID=$!
for _ in $(seq 100); do
  body=$(curl -sf "http://127.0.0.1:$port/o/hello.txt" 2>/dev/null) && break
  sleep 0.1
done
[ "${body:-}" = "from the origin" ] || fail "no answer through the installed tamis: $(cat "$TMP/tamis.log")"
kill -TERM "$TAMIS_PID"
wait "$TAMIS_PID" || fail "tamis exited $? after SIGTERM: $(cat "$TMP/tamis.log")"
TAMIS_PID=
grep -q 'all connections closed' "$TMP/tamis.log" || fail "no clean stop: $(cat "$TMP/tamis.log")"
ok "the installed binary served through a loopback origin as user tamis, and stopped cleanly"
echo "deploy/debian/check.sh: all checks passed"
