#!/usr/bin/env bash
# The query service's outside testers, installed from the package
# registries only (never a browser download):
#  * Debian's chromium, driven by playwright-core (npm) from tests/browser;
#  * schemathesis (PyPI) in a virtualenv kept between runs.
# Prints the path of schemathesis' `st` program.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
tools=${COPILOT_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/copilot-data}

if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium >&2; }
fi

if [[ ! -d tests/browser/node_modules/playwright-core ]]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

venv="$tools/schemathesis-$SCHEMATHESIS_VERSION"
# A virtualenv cannot be moved (its scripts name their interpreter's
# path), so it is built in place and marked complete last.
if [[ ! -f "$venv/.complete" ]]; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/st"
