#!/usr/bin/env bash
# Checks that PostgreSQL, Redis and NATS (with JetStream) answer on loopback
# and starts any that does not, with the same commands the machines use.
# With --install (or COPILOT_INSTALL_SERVICES=1) a missing server is first
# installed from Debian's packages (needs root).
set -euo pipefail

install=${COPILOT_INSTALL_SERVICES:-0}
[[ "${1:-}" == "--install" ]] && install=1

log() { printf 'services: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 name=$2
    for _ in $(seq 1 60); do
        port_open "$port" && return 0
        sleep 0.5
    done
    log "$name did not come up on port $port"
    return 1
}

apt_install() {
    if [[ "$install" != 1 ]]; then
        log "$1 is not installed; rerun with --install (or COPILOT_INSTALL_SERVICES=1) to install it"
        return 1
    fi
    if [[ $(id -u) != 0 ]]; then
        log "installing $1 needs root"
        return 1
    fi
    log "installing $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
    if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
        log "PostgreSQL is up"
        return 0
    fi
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        apt_install postgresql postgresql-contrib
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_port 5432 PostgreSQL
    for _ in $(seq 1 40); do
        pg_isready -q -h 127.0.0.1 -p 5432 && return 0
        sleep 0.5
    done
    log "PostgreSQL does not accept connections"
    return 1
}

ensure_redis() {
    if port_open 6379; then
        log "Redis is up"
        return 0
    fi
    command -v redis-server >/dev/null || apt_install redis-server
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_port 6379 Redis
}

ensure_nats() {
    if port_open 4222; then
        log "NATS is up"
        return 0
    fi
    [[ -x /usr/sbin/nats-server ]] || apt_install nats-server
    log "starting NATS with JetStream"
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    wait_port 4222 NATS
}

ensure_postgres
ensure_redis
ensure_nats
