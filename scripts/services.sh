#!/usr/bin/env bash
# The template repository's Kafka and Redis, for its tests and benchmarks: the very scripts a
# generated service runs for `make services` (template/scripts/), on ports and a run directory of
# their own, so they never meet a service's local Kafka and Redis on 9092 and 6379.
#
#   scripts/services.sh start|stop|status|restart|clean
#   eval "$(scripts/services.sh env)"   # exports KAFKA_BOOTSTRAP_SERVERS and REDIS_URL
set -euo pipefail

export KAFKA_PORT=${KAFKA_PORT:-39092} KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-39093}
export REDIS_PORT=${REDIS_PORT:-36379} BFF_RUN_DIR=${BFF_RUN_DIR:-$HOME/.cache/bff-template/run}
exec bash "$(dirname "${BASH_SOURCE[0]}")/../template/scripts/services.sh" "$@"
