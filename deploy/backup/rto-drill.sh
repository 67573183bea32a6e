#!/usr/bin/env bash
# The recovery-time drill: how long from "the primary is gone" to every role
# serving again with its read models rebuilt, measured on this machine.
#
#   deploy/backup/rto-drill.sh                 # self-contained: see below
#   DRILL_RATE=4000 DRILL_SECONDS=250 deploy/backup/rto-drill.sh   # ~1M events
#   DRILL_FROM_REPOSITORY=1 deploy/backup/rto-drill.sh              # monthly validation
#
# Self-contained: starts SeaweedFS (S3 over TLS) and a PostgreSQL cluster
# of its own archiving through deploy/backup/pgbackrest.conf (the shipped
# file, rendered), takes a full backup, runs `copilot-data up` and `demo`
# against it (the log grows after the backup, so the restore replays WAL),
# loses the primary (immediate stop, data directory removed), then times:
# pgBackRest restore of the latest archive, recovery, `restore-check`
# (log checks, every SQL read model rebuilt and verified), and `up` until
# /readyz answers. With DRILL_FROM_REPOSITORY=1 it restores the installed
# stanza (/etc/pgbackrest/pgbackrest.conf) into a scratch directory and
# port instead, and runs restore-check there.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${COPILOT_BIN:-}
if [[ -z $BIN ]]; then
    cargo build --quiet --locked --release
    BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/copilot-data
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
RATE=${DRILL_RATE:-300}
SECONDS_OF_LOAD=${DRILL_SECONDS:-5}
WORK=$(mktemp -d /tmp/copilot-drill.XXXXXX)
chmod 755 "$WORK"
pids=()

as_postgres() {
    if [[ $(id -un) == postgres ]]; then "$@"; else runuser -u postgres -- "$@"; fi
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 1 300); do
        (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "drill: nothing answers on port $1" >&2
    return 1
}
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.1f}')"; }
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # SeaweedFS does not stop on SIGTERM.
    [[ -n ${weed_pid:-} ]] && kill -9 "$weed_pid" 2>/dev/null || true
    if [[ -n ${COPILOT_NATS_PREFIX:-} ]]; then
        # The drill's JetStream streams (by the JetStream API's own subject)
        # and Redis keys.
        suffix=${COPILOT_NATS_PREFIX^^}
        for stream in COPILOT_COMMANDS COPILOT_RESULTS; do
            printf 'CONNECT {"verbose":false}\r\nPUB $JS.API.STREAM.DELETE.%s_%s 0\r\n\r\nPING\r\n' "$stream" "$suffix" \
                | timeout 2 bash -c 'cat > /dev/tcp/127.0.0.1/4222' 2>/dev/null || true
        done
        redis-cli --scan --pattern "${COPILOT_REDIS_PREFIX}*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
    fi
    for data in "$WORK/primary" "$WORK/restored"; do
        [[ -f $data/postmaster.pid ]] && as_postgres "$PGBIN/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Restores the stanza of $1 (a pgbackrest.conf) into $WORK/restored, starts
# it on $2 with archiving off, and waits for the end of recovery.
restore_and_start() {
    local conf=$1 port=$2
    mkdir -p "$WORK/restored"
    chown postgres "$WORK/restored" 2>/dev/null || true
    chmod 700 "$WORK/restored"
    as_postgres pgbackrest --config="$conf" --stanza=copilot --pg1-path="$WORK/restored" restore
    as_postgres "$PGBIN/pg_ctl" -D "$WORK/restored" -l "$WORK/restored.log" -w -t 600 \
        -o "-p $port -k $WORK -c listen_addresses=127.0.0.1 -c archive_mode=off" start >/dev/null
    until [[ $(psql -tA -h 127.0.0.1 -p "$port" -U postgres -d postgres -c 'SELECT pg_is_in_recovery()') == f ]]; do
        sleep 0.2
    done
}

if [[ -n ${DRILL_FROM_REPOSITORY:-} ]]; then
    port=$(free_port)
    started=$(now)
    restore_and_start /etc/pgbackrest/pgbackrest.conf "$port"
    restored_s=$(since "$started")
    COPILOT_DATABASE_URL="postgres://postgres@127.0.0.1:$port/${DRILL_DATABASE:-copilot}" "$BIN" restore-check
    echo "drill: restore ${restored_s} s, restore and check $(since "$started") s (from the installed repository)"
    exit 0
fi

WEED=${COPILOT_WEED:-$(deploy/backup-tools.sh)}
[[ $(id -u) == 0 ]] && chown postgres "$WORK"

# The object store, over TLS with a certificate for localhost.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$WORK/s3.key" -out "$WORK/s3.crt" 2>/dev/null
chmod 644 "$WORK/s3.crt"
S3_KEY=drill
S3_SECRET=$(openssl rand -hex 16)
printf '{"identities":[{"name":"drill","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}' \
    "$S3_KEY" "$S3_SECRET" > "$WORK/s3.json"
S3_PORT=$(free_port)
mkdir -p "$WORK/weed"
"$WEED" mini -dir="$WORK/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="$(free_port)" -master.port.grpc="$(free_port)" \
    -volume.port="$(free_port)" -volume.port.grpc="$(free_port)" \
    -filer.port="$(free_port)" -filer.port.grpc="$(free_port)" \
    -s3.port="$(free_port)" -s3.port.grpc="$(free_port)" -s3.port.https="$S3_PORT" \
    -s3.cert.file="$WORK/s3.crt" -s3.key.file="$WORK/s3.key" -s3.config="$WORK/s3.json" \
    -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false \
    -admin.port="$(free_port)" -admin.port.grpc="$(free_port)" -bucket=backups \
    > "$WORK/weed.log" 2>&1 &
weed_pid=$!
wait_port "$S3_PORT"

# The primary, archiving through the shipped configuration.
PGPORT=$(free_port)
mkdir -p "$WORK/pgbackrest"/{log,lock,spool}
export BACKUP_S3_ENDPOINT=localhost BACKUP_S3_PORT=$S3_PORT BACKUP_S3_BUCKET=backups \
    BACKUP_S3_REGION=us-east-1 BACKUP_S3_KEY=$S3_KEY BACKUP_S3_KEY_SECRET=$S3_SECRET \
    BACKUP_S3_CA_FILE=$WORK/s3.crt BACKUP_REPO_PATH=/drill BACKUP_CIPHER_PASS=$(openssl rand -hex 24) \
    BACKUP_SPOOL_PATH=$WORK/pgbackrest/spool BACKUP_LOCK_PATH=$WORK/pgbackrest/lock \
    BACKUP_LOG_PATH=$WORK/pgbackrest/log PGDATA=$WORK/primary PGPORT PGSOCKET=$WORK
CONF=$WORK/pgbackrest/pgbackrest.conf
envsubst < deploy/backup/pgbackrest.conf > "$CONF"
[[ $(id -u) == 0 ]] && chown -R postgres "$WORK"
as_postgres "$PGBIN/initdb" -D "$WORK/primary" -U postgres --auth=trust >/dev/null
{
    sed "s|pgbackrest --stanza|pgbackrest --config=$CONF --stanza|" deploy/backup/postgresql.backup.conf
    echo "port = $PGPORT"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$WORK'"
} | as_postgres tee -a "$WORK/primary/postgresql.conf" >/dev/null
as_postgres "$PGBIN/pg_ctl" -D "$WORK/primary" -l "$WORK/primary.log" -w start >/dev/null
for _ in $(seq 1 60); do
    as_postgres pgbackrest --config="$CONF" --stanza=copilot stanza-create >/dev/null 2>&1 && break
    sleep 0.5
done
as_postgres pgbackrest --config="$CONF" --stanza=copilot check

URL="postgres://postgres@127.0.0.1:$PGPORT/copilot"
HTTP_PORT=$(free_port)
export COPILOT_DATABASE_URL=$URL COPILOT_NATS_PREFIX=drill$RANDOM COPILOT_REDIS_PREFIX=drill$RANDOM: \
    COPILOT_BOOTSTRAP_TOKEN=boot-$(openssl rand -hex 8) COPILOT_HTTP_ADDR=127.0.0.1:$HTTP_PORT \
    COPILOT_MASTER_KEY=$(openssl rand -hex 32) \
    COPILOT_METRICS_ADDR=off COPILOT_PROJECTOR_VECTORS=false COPILOT_PROJECTOR_RELAY=false \
    COPILOT_RATE_LIMIT_PER_MINUTE=0 COPILOT_LOG=warn
"$BIN" migrate
as_postgres pgbackrest --config="$CONF" --stanza=copilot --type=full backup
"$BIN" up > "$WORK/up.log" 2>&1 &
up_pid=$!
pids+=("$up_pid")
wait_port "$HTTP_PORT"
"$BIN" demo --rate "$RATE" --seconds "$SECONDS_OF_LOAD" > "$WORK/demo.log" 2>&1
kill "$up_pid"; wait "$up_pid" 2>/dev/null || true
events=$(psql -tA -h 127.0.0.1 -p "$PGPORT" -U postgres -d copilot -c 'SELECT count(*) FROM events')
# Let archive_timeout (or a switch) send the last segment, as it would in
# production after the last write; then the primary is lost.
psql -qtA -h 127.0.0.1 -p "$PGPORT" -U postgres -d copilot -c 'SELECT pg_switch_wal()' >/dev/null
as_postgres pgbackrest --config="$CONF" --stanza=copilot check >/dev/null
as_postgres "$PGBIN/pg_ctl" -D "$WORK/primary" -m immediate stop >/dev/null
rm -rf "$WORK/primary"
echo "drill: $events events written ($RATE commands/s for $SECONDS_OF_LOAD s after the backup); the primary is lost"

# The clock starts: restore, recover, rebuild, serve.
started=$(now)
RESTORED_PORT=$(free_port)
restore_and_start "$CONF" "$RESTORED_PORT"
restored_s=$(since "$started")
export COPILOT_DATABASE_URL="postgres://postgres@127.0.0.1:$RESTORED_PORT/copilot"
restored_events=$(psql -tA -h 127.0.0.1 -p "$RESTORED_PORT" -U postgres -d copilot -c 'SELECT count(*) FROM events')
"$BIN" restore-check | sed 's/^/  /'
checked_s=$(since "$started")
"$BIN" up > "$WORK/up-restored.log" 2>&1 &
pids+=($!)
until curl -fs "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null; do sleep 0.2; done
total_s=$(since "$started")
if [[ $restored_events != "$events" ]]; then
    echo "drill: FAILED: $restored_events of $events events restored" >&2
    exit 1
fi
echo "drill: restore + recovery ${restored_s} s, + restore-check ${checked_s} s, every role ready ${total_s} s ($restored_events events; the seed's RTO is 900 s)"
