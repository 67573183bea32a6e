#!/usr/bin/env bash
# The Python client kit's interpreter: a virtualenv with clients/python's
# requirements (nats-py, msgpack from PyPI), kept between runs. Prints the
# path of its python.
set -euo pipefail
cd "$(dirname "$0")/.."

source deploy/venv.sh
hash=$(sha256sum clients/python/requirements.txt | cut -c1-12)
python_tools "python-client-$hash" -r clients/python/requirements.txt
echo "$venv/bin/python"
