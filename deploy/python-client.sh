#!/usr/bin/env bash
# The Python client kit's interpreter: a virtualenv with clients/python's
# requirements (nats-py, msgpack from PyPI), kept between runs. Prints the
# path of its python.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${COPILOT_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/copilot-data}
hash=$(sha256sum clients/python/requirements.txt | cut -c1-12)
venv="$tools/python-client-$hash"
# Built in place (a virtualenv cannot be moved) and marked complete last.
if [[ ! -f "$venv/.complete" ]]; then
  echo "installing the Python client's requirements" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r clients/python/requirements.txt >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
