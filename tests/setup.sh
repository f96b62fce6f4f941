#!/usr/bin/env bash
# What the test suite needs beyond the Rust toolchain, on Debian or Ubuntu: Chromium and the
# npm packages of tests/browser (tests/browser.rs drives the real browser through
# playwright-core; Node.js from Debian if there is none), Prometheus (tests/prometheus.rs
# scrapes tamis with the real server), and Redis (tests/replicas.rs shares pseudonym keys
# between replicas through the real server; Valkey speaks the same protocol). Does nothing when everything is there; installs with
# apt-get as root, or through sudo.
#
#   bash tests/setup.sh && cargo test --locked --lib --bins --tests     # README's command
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v redis-server >/dev/null || missing+=(redis-server)
if ((${#missing[@]})); then
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  echo "tests/setup.sh: installing (Debian) ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The browser tests' packages, exactly as locked (playwright-core, Leaflet, a font, the
# Plausible tracker): only when missing or older than the lock.
if [ ! -d tests/browser/node_modules ] ||
  [ tests/browser/package-lock.json -nt tests/browser/node_modules ]; then
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi
