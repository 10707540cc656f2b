#!/usr/bin/env bash
# Helpers shared by kafka.sh and redis.sh (sourced, not run): logging, polling,
# stopping a process.

log() { printf '%s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# wait_for SECONDS CMD...: run CMD every half second until it succeeds; fails on timeout.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# read_pid PIDFILE: the pid in PIDFILE, or nothing.
read_pid() { if [[ -s $1 ]]; then cat "$1"; fi; }

# pid_is PID PATTERN: PID is alive and its command line contains PATTERN (guards against pid reuse).
pid_is() {
  [[ -n $1 && $(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") == *"$2"* ]]
}
pid_gone() { ! pid_is "$@"; }

# stop_pid PID PATTERN SECONDS: SIGTERM the process if it is still PATTERN, SIGKILL it after SECONDS.
stop_pid() {
  local pid=$1 pattern=$2 timeout=$3
  pid_is "$pid" "$pattern" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_for "$timeout" pid_gone "$pid" "$pattern"; then
    log "  still running after ${timeout}s, sending SIGKILL to $pid"
    kill -KILL "$pid" 2>/dev/null || true
    wait_for 5 pid_gone "$pid" "$pattern" || true
  fi
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
