#!/usr/bin/env bash
# Start/stop the local services the service and its tests need (Kafka and Redis, no Docker),
# and print their connection settings:
#
#   scripts/services.sh start|stop|status|restart|clean
#   eval "$(scripts/services.sh env)"   # exports KAFKA_BOOTSTRAP_SERVERS and REDIS_URL
#
# See kafka.sh and redis.sh beside this script for the ports and directories they use.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# both ACTION: run ACTION on Kafka and Redis in parallel; fails if either fails.
both() {
  local kafka redis rc=0
  bash "$here/kafka.sh" "$1" &
  kafka=$!
  bash "$here/redis.sh" "$1" &
  redis=$!
  wait "$kafka" || rc=1
  wait "$redis" || rc=1
  return "$rc"
}

case ${1:-} in
start | stop | status | restart | clean) both "$1" ;;
env)
  echo "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${KAFKA_PORT:-9092}"
  echo "export REDIS_URL=redis://127.0.0.1:${REDIS_PORT:-6379}/0"
  ;;
*)
  echo "usage: $0 start|stop|status|restart|clean|env" >&2
  exit 1
  ;;
esac
