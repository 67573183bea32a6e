#!/usr/bin/env bash
# The query service's outside testers, installed from the package
# registries only (never a browser download):
#  * Debian's chromium, driven by playwright-core (npm) from tests/browser;
#  * schemathesis (PyPI) in a virtualenv kept between runs.
# Prints the path of schemathesis' `st` program.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
source deploy/venv.sh

if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium >&2; }
fi

if [[ ! -d tests/browser/node_modules/playwright-core ]]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

python_tools "schemathesis-$SCHEMATHESIS_VERSION" "schemathesis==$SCHEMATHESIS_VERSION"
echo "$venv/bin/st"
