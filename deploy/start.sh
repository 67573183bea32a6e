#!/usr/bin/env bash
# Starts the whole system on a fresh machine: local services (installed from
# the system's packages if missing), a release build, migrations, then every
# role in one process (`copilot-data up`). Configuration: config/copilot.toml
# if present, overridden by COPILOT_* variables (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

COPILOT_INSTALL_SERVICES=${COPILOT_INSTALL_SERVICES:-1} deploy/services.sh
# The local embedding model, unless one is configured elsewhere.
COPILOT_MODEL_DIR=${COPILOT_MODEL_DIR:-$(deploy/model.sh)}
export COPILOT_MODEL_DIR
cargo build --release --locked
bin=${CARGO_TARGET_DIR:-target}/release/copilot-data
"$bin" migrate
exec "$bin" up
