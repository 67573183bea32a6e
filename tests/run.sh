#!/usr/bin/env bash
# The test command: services up, every crate's tests, then the restore case
# (a pg_dump restored into a second, freshly initialised cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/services.sh
cargo test --workspace --locked
tests/restore.sh
