#!/usr/bin/env bash
# The restore case of the event store: events written in the main cluster are
# dumped with pg_dump and restored into a freshly initialised cluster (whose
# transaction counter is far behind), then appended to and read back in one
# order. initdb will not run as root, so the cluster belongs to `postgres`.
set -euo pipefail
cd "$(dirname "$0")/.."

PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
PORT=${RESTORE_PORT:-54329}
SOURCE_DB="restore_src_$$_$RANDOM"
SOURCE_URL="postgres://postgres@127.0.0.1:5432/$SOURCE_DB"
TARGET_URL="postgres://postgres@127.0.0.1:$PORT/restored"
WORK=$(mktemp -d /tmp/copilot-restore.XXXXXX)
chmod 755 "$WORK"
[[ $(id -u) == 0 ]] && chown postgres "$WORK"

as_postgres() {
    if [[ $(id -un) == postgres ]]; then "$@"; else runuser -u postgres -- "$@"; fi
}

cleanup() {
    as_postgres "$PGBIN/pg_ctl" -D "$WORK/cluster" -m immediate stop >/dev/null 2>&1 || true
    psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS \"$SOURCE_DB\" WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "restore: source database $SOURCE_DB"
psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE \"$SOURCE_DB\""
COPILOT_DATABASE_URL=$SOURCE_URL cargo run --quiet --locked -- migrate

# A fresh cluster starts near transaction 750; make sure the source is far
# ahead so the restored events carry higher ids than the new cluster's.
next=$(psql -tA -h 127.0.0.1 -U postgres -d "$SOURCE_DB" -c "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
if (( next < 20000 )); then
    yes 'SELECT pg_current_xact_id();' | head -n $((20000 - next)) | psql -q -h 127.0.0.1 -U postgres -d "$SOURCE_DB" >/dev/null
fi

RESTORE_SOURCE_URL=$SOURCE_URL cargo test --quiet --locked -p eventstore --test store -- --ignored --exact restore::restore_phase_write
"$PGBIN/pg_dump" -h 127.0.0.1 -U postgres -Fc -f "$WORK/events.dump" "$SOURCE_DB"
chmod 644 "$WORK/events.dump"

as_postgres "$PGBIN/initdb" -D "$WORK/cluster" -U postgres --auth=trust >/dev/null
as_postgres "$PGBIN/pg_ctl" -D "$WORK/cluster" -l "$WORK/cluster.log" -w \
    -o "-p $PORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
# Roles are cluster objects that pg_dump leaves out: restore them first,
# as an operator would (the read model grants to copilot_* roles).
"$PGBIN/pg_dumpall" -h 127.0.0.1 -U postgres --roles-only \
    | psql -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres >/dev/null 2>&1
psql -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE restored"
"$PGBIN/pg_restore" -h 127.0.0.1 -p "$PORT" -U postgres -d restored --no-owner "$WORK/events.dump"

RESTORE_TARGET_URL=$TARGET_URL cargo test --quiet --locked -p eventstore --test store -- --ignored --exact restore::restore_phase_verify
echo "restore: 1 passed, 0 failed"
