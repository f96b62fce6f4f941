#!/usr/bin/env bash
# deploy/debian/check.sh: builds the Debian package, installs it with `dpkg -i` on this machine
# (root; CI's throwaway machine), and checks what it installed: files, modes, the conffile, the
# deploy examples the docs name (/usr/share/doc/tamis/examples/), the `tamis` user, the enabled unit; `tamis check` on the installed config (found by the default
# path); the installed binary, run as the tamis user, serving a loopback origin and stopping
# cleanly on SIGTERM, its disk tier writing to /var/cache/tamis (the unit's CacheDirectory=);
# `dpkg --remove` keeps that cache, `dpkg --purge` removes it, in both layouts systemd makes
# (a directory, or with DynamicUser= a symlink to /var/cache/private/tamis). Purges the
# package at the end (the user stays, as Debian leaves them).
#
#   bash deploy/debian/check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
TMP=$(mktemp -d)
chmod 0755 "$TMP"
ORIGIN_PID= TAMIS_PID= MADE_CACHE= MADE_PRIVATE=
# A cache directory that was here before (tamis run as root on the shipped config makes it, as
# CI's harness does when it tries the README's run command) is set aside and put back at the
# end: the checks below need to see what the package and the service make, and purge removes.
SAVED=/var/cache/tamis.saved-by-check.$$
SAVED_PRIVATE=/var/cache/private/tamis.saved-by-check.$$
restore() {
  if [ -e "$SAVED" ] || [ -L "$SAVED" ]; then
    rm -rf /var/cache/tamis && mv "$SAVED" /var/cache/tamis
  fi
  if [ -e "$SAVED_PRIVATE" ]; then
    rm -rf /var/cache/private/tamis && mv "$SAVED_PRIVATE" /var/cache/private/tamis
  fi
}
cleanup() {
  [ -n "$TAMIS_PID" ] && kill "$TAMIS_PID" 2>/dev/null || true
  [ -n "$ORIGIN_PID" ] && kill "$ORIGIN_PID" 2>/dev/null || true
  dpkg --purge tamis >/dev/null 2>&1 || true
  [ -z "$MADE_CACHE" ] || rm -rf /var/cache/tamis /var/cache/private/tamis
  [ -z "$MADE_PRIVATE" ] || rmdir /var/cache/private 2>/dev/null || true
  restore
  rm -rf "$TMP"
}
trap cleanup EXIT
if [ -e /var/cache/tamis ] || [ -L /var/cache/tamis ]; then
  mv /var/cache/tamis "$SAVED"
  echo "note: /var/cache/tamis was here before this check; set aside, put back at the end"
fi
[ ! -e /var/cache/private/tamis ] || mv /var/cache/private/tamis "$SAVED_PRIVATE"
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
grep -qx 'CacheDirectory=tamis' /usr/lib/systemd/system/tamis.service ||
  fail "the installed unit does not name its cache directory (CacheDirectory=tamis)"
grep -q '^disk_dir = "/var/cache/tamis"' /etc/tamis/tamis.toml ||
  fail "the installed config does not keep its disk cache in /var/cache/tamis, the unit's CacheDirectory"
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
# The origin: files of $TMP/www, cacheable for an hour (so that the disk tier keeps them).
python3 - "$origin" "$TMP/www" >/dev/null 2>&1 <<'PY' &
import functools, sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
class H(SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("Cache-Control", "public, max-age=3600")
        super().end_headers()
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])),
                    functools.partial(H, directory=sys.argv[2])).serve_forever()
PY
ORIGIN_PID=$!
# The cache directory as systemd makes it for CacheDirectory=tamis with a static user (the
# service's user, 0700); with DynamicUser= it is a symlink into /var/cache/private (below).
[ ! -e /var/cache/tamis ] || fail "/var/cache/tamis exists before the check made it: who made it?"
MADE_CACHE=1
install -d -o tamis -g tamis -m 0700 /var/cache/tamis
cat >"$TMP/tamis.toml" <<TOML
[server]
listen = "127.0.0.1:$port"

[cache]
disk_dir = "/var/cache/tamis"
max_disk_bytes = "16 MiB"

[[route]]
name = "origin"
kind = "static"
prefix = "/o/"
upstream = "http://127.0.0.1:$origin/"
disk_cache = true
TOML
chmod 0644 "$TMP/tamis.toml"
setpriv --reuid=tamis --regid=tamis --init-groups /usr/bin/tamis -c "$TMP/tamis.toml" 2>"$TMP/tamis.log" &
TAMIS_PID=$!
for _ in $(seq 100); do
  body=$(curl -sf "http://127.0.0.1:$port/o/hello.txt" 2>/dev/null) && break
  sleep 0.1
done
[ "${body:-}" = "from the origin" ] || fail "no answer through the installed tamis: $(cat "$TMP/tamis.log")"
# The miss goes to the disk tier in the background: wait for its file.
for _ in $(seq 50); do
  stored=$(find /var/cache/tamis -type f | wc -l)
  [ "$stored" -ge 1 ] && break
  sleep 0.1
done
kill -TERM "$TAMIS_PID"
wait "$TAMIS_PID" || fail "tamis exited $? after SIGTERM: $(cat "$TMP/tamis.log")"
TAMIS_PID=
grep -q 'all connections closed' "$TMP/tamis.log" || fail "no clean stop: $(cat "$TMP/tamis.log")"
ok "the installed binary served through a loopback origin as user tamis, and stopped cleanly"
[ "$stored" -ge 1 ] || fail "nothing written to /var/cache/tamis by the disk tier: $(cat "$TMP/tamis.log")"
[ -z "$(find /var/cache/tamis -type f ! -user tamis)" ] || fail "files in /var/cache/tamis not owned by tamis"
ok "its disk tier wrote $stored file(s) to /var/cache/tamis, as user tamis"

# Removing keeps the cache (a reinstall starts warm); purging deletes it (Debian policy).
dpkg --remove tamis >/dev/null
[ -d /var/cache/tamis ] || fail "dpkg --remove deleted the cache"
dpkg --purge tamis >/dev/null
[ ! -e /var/cache/tamis ] || fail "/var/cache/tamis is still there after dpkg --purge"
# The DynamicUser= layout: the directory in /var/cache/private, /var/cache/tamis a symlink.
dpkg -i "$deb" >/dev/null
[ -d /var/cache/private ] || MADE_PRIVATE=1
install -d -m 0700 /var/cache/private
install -d -o tamis -g tamis -m 0700 /var/cache/private/tamis
echo x >/var/cache/private/tamis/object
ln -s private/tamis /var/cache/tamis
dpkg --purge tamis >/dev/null
[ ! -e /var/cache/tamis ] && [ ! -L /var/cache/tamis ] && [ ! -e /var/cache/private/tamis ] ||
  fail "after dpkg --purge: $(ls -ld /var/cache/tamis /var/cache/private/tamis 2>&1)"
ok "dpkg --remove keeps /var/cache/tamis; dpkg --purge removes it (a directory, or DynamicUser's symlink and /var/cache/private/tamis)"
echo "deploy/debian/check.sh: all checks passed"
