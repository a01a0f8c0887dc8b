#!/usr/bin/env bash
# Installs what the test suite starts by itself: PostgreSQL from Debian's packages.
# The tests start a throwaway cluster on loopback and stop it (tests/pg.py).
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "PostgreSQL is needed by the tests: run 'sudo apt-get install -y postgresql'" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q postgresql
fi
