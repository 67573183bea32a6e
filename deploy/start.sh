#!/usr/bin/env bash
# Starts the whole system on a fresh machine: local services (installed from
# the system's packages if missing), a release build, migrations and the
# services' logins, the first admin (and a sign-in token for the dashboard),
# then every role in one process (`copilot-data up`). Configuration:
# config/copilot.toml if present, overridden by COPILOT_* variables (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

COPILOT_INSTALL_SERVICES=${COPILOT_INSTALL_SERVICES:-1} deploy/services.sh
# The local embedding model, unless one is configured elsewhere.
COPILOT_MODEL_DIR=${COPILOT_MODEL_DIR:-$(deploy/model.sh)}
export COPILOT_MODEL_DIR
# COPILOT_BIN: a binary already built (the first-run test uses its own).
if [[ -z ${COPILOT_BIN:-} ]]; then
    cargo build --release --locked
    COPILOT_BIN=${CARGO_TARGET_DIR:-target}/release/copilot-data
fi
bin=$COPILOT_BIN
# What this start keeps between runs (COPILOT_DATA_DIR, default ./data).
data=${COPILOT_DATA_DIR:-data}
mkdir -p "$data"
# Each service runs as its own least-privilege database login; `migrate`
# (as the owner) creates them. Their passwords are made once and kept here.
owner_url=${COPILOT_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/copilot}
server_and_db=${owner_url#*@}
secrets=$data/logins.env
if [[ ! -f $secrets ]]; then
    (
        umask 077
        for role in command projector query; do
            password=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
            printf 'COPILOT_%s_DATABASE_URL=postgres://copilot_%s_svc%s:%s@%s\n' \
                "${role^^}" "$role" "${COPILOT_LOGIN_SUFFIX:-}" "$password" "$server_and_db"
        done > "$secrets"
    )
fi
# The master key that wraps every user's data key (crypto-shredding: see
# docs/recovery.md). Made once; keep a copy apart from the database's
# backups, which are unreadable without it.
if [[ -z ${COPILOT_MASTER_KEY:-} && -z ${COPILOT_MASTER_KEY_FILE:-} ]]; then
    if [[ ! -f $data/master.key ]]; then
        (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$data/master.key")
    fi
    export COPILOT_MASTER_KEY_FILE=$data/master.key
fi
set -a
# shellcheck source=/dev/null
. "$secrets"
set +a
"$bin" migrate
# The first admin, made here (this machine owns the database: no bootstrap
# token needed); its password is kept in data/admin-password. Every start
# prints a fresh sign-in token for the dashboard.
admin_email=${COPILOT_ADMIN_EMAIL:-admin@copilot.local}
if [[ ! -f $data/admin-password ]]; then
    (
        umask 077
        "$bin" admin create --email "$admin_email" >"$data/admin-created.txt"
        sed -n 's/^password (shown once): //p' "$data/admin-created.txt" >"$data/admin-password"
        rm -f "$data/admin-created.txt"
    )
fi
token=$("$bin" admin token --email "$admin_email" <"$data/admin-password")
addr=${COPILOT_HTTP_ADDR:-127.0.0.1:8080}
cat <<MSG

  copilot-data is starting. Sign in to the dashboard at http://$addr/
  as $admin_email with this token (valid 24 h; run deploy/start.sh again,
  or \`copilot-data admin token --email $admin_email <$data/admin-password\`,
  for a new one):

  $token

MSG
exec "$bin" up
