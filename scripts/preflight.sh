#!/usr/bin/env bash
# What `make run` needs before it can install anything: Python 3.11 or newer and a C/C++ compiler
# (pip builds llama.cpp, the bundled model's engine, for this CPU). One sentence on what is missing.
set -u
python=${1:-python3}
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || version=""
if [ -z "$version" ]; then
  echo "selfinstruct needs Python 3.11 or newer and '$python' does not run: install Python 3.11+ (Debian: apt-get install python3 python3-venv) or run make with PYTHON=/path/to/python3.11." >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "selfinstruct needs Python 3.11 or newer and '$python' is $version: install a newer one and run make with PYTHON=/path/to/python3.11." >&2
  exit 1
fi
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "$python cannot make virtual environments: install its venv module (Debian: apt-get install python3-venv)." >&2
  exit 1
fi
if ! { command -v cc || command -v gcc || command -v clang; } >/dev/null 2>&1 \
  || ! { command -v c++ || command -v g++ || command -v clang++; } >/dev/null 2>&1; then
  echo "selfinstruct builds llama.cpp on install and needs a C and C++ compiler: install one (Debian/Ubuntu: apt-get install build-essential; macOS: xcode-select --install)." >&2
  exit 1
fi
