#!/usr/bin/env bash
# Installs what the test suite uses from Debian's packages: PostgreSQL (the tests start a
# throwaway cluster on loopback and stop it, see testbed/postgres.py), docker-compose (v1), which
# validates docker-compose.yml offline, and Chromium with a CJK font for the dashboard tests
# (Playwright drives this browser; it never downloads one).
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fc-list :lang=zh 2>/dev/null | grep -q . || missing+=(fonts-wqy-zenhei)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "The tests need: ${missing[*]}; install them with 'sudo apt-get install -y ${missing[*]}'" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
fi
