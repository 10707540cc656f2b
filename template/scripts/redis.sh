#!/usr/bin/env bash
# Run Redis (Debian's redis-server) on 127.0.0.1 for local development and tests, without Docker
# or systemd. A Redis already answering on the port (a system one on 6379) is used as it is.
#
#   scripts/redis.sh start|stop|status|restart|clean
#
# Data dir, log and pid file live in ${BFF_RUN_DIR:-~/.cache/bff-template/local}/redis.
# Nothing is persisted (--save "" --appendonly no). Hashes of up to 512 entries of up to 1 KiB stay
# compact listpacks (the read model's buckets). Installs redis-server with apt
# if missing.
# Env: REDIS_PORT (6379).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

port=${REDIS_PORT:-6379}
run=${BFF_RUN_DIR:-$HOME/.cache/bff-template/local}/redis
pidfile=$run/redis.pid

install_redis() {
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "redis: redis-server is missing; install the redis-server package"
    sudo=(sudo)
  fi
  log "redis: installing redis-server with apt-get..."
  "${sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq redis-server >&2
}

answering() { [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; }

status() {
  if command -v redis-cli >/dev/null && answering; then
    log "redis: running on 127.0.0.1:$port"
  else
    log "redis: not running"
    return 1
  fi
}

start() {
  command -v redis-server >/dev/null || install_redis
  if answering; then
    log "redis: already running on 127.0.0.1:$port"
    return
  fi
  local t0=$SECONDS
  mkdir -p "$run/data"
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
    --pidfile "$pidfile" --dir "$run/data" --logfile "$run/redis.log" \
    --save "" --appendonly no \
    --hash-max-listpack-entries 512 --hash-max-listpack-value 1024 >&2
  if ! wait_for 10 answering; then
    log "redis: not answering on 127.0.0.1:$port after 10s; last lines of $run/redis.log:"
    tail -n 20 "$run/redis.log" >&2 || true
    exit 1
  fi
  log "redis: ready on 127.0.0.1:$port in $((SECONDS - t0))s"
}

stop() {
  local pid
  pid=$(read_pid "$pidfile")
  if answering; then
    log "redis: stopping"
    redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
  fi
  stop_pid "$pid" redis-server 10 # in case shutdown did not work
  rm -f "$pidfile"
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
restart) stop && start ;;
clean)
  stop
  rm -rf "$run"
  log "redis: removed $run"
  ;;
*) die "usage: $0 start|stop|status|restart|clean" ;;
esac
