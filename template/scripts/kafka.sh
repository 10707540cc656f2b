#!/usr/bin/env bash
# Run Apache Kafka as a single KRaft node (broker + controller) on 127.0.0.1 for local
# development and tests, without Docker: only Java 17 and Maven are needed.
#
#   scripts/kafka.sh start|stop|status|restart|clean
#   scripts/kafka.sh topics ARGS...   # kafka-topics against this broker, e.g. `topics --list`
#
# Jars are fetched once with Maven into ${BFF_CACHE_DIR:-~/.cache/bff-template}/kafka-<version>/libs
# (shared by every service made from the template); config, data and logs live in
# ${BFF_RUN_DIR:-~/.cache/bff-template/local}/kafka. `stop` keeps the data; `clean` deletes it.
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_NUM_PARTITIONS (1),
#      KAFKA_HEAP_OPTS (-Xms256m -Xmx1g), KAFKA_LOG_LEVEL (WARN), KAFKA_START_TIMEOUT (120),
#      KAFKA_EXTRA_CONFIG: a server.properties fragment appended to the generated one (a later key
#        wins, so it may redefine listeners, e.g. add SSL and SASL_SSL ones beside PLAINTEXT),
#      KAFKA_FORMAT_ARGS: extra arguments, split on whitespace, to `kafka-storage format` on first
#        start, e.g. --add-scram SCRAM-SHA-256=[name=alice,password=alice-secret].
# The PLAINTEXT listener on KAFKA_PORT must stay: the readiness check and `topics` use it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

KAFKA_VERSION=4.4.0
LOG4J_VERSION=2.25.5 # the log4j-core/api version kafka-server 4.4.0 itself depends on
port=${KAFKA_PORT:-9092}
controller_port=${KAFKA_CONTROLLER_PORT:-9093}
bootstrap=127.0.0.1:$port
cache=${BFF_CACHE_DIR:-$HOME/.cache/bff-template}/kafka-$KAFKA_VERSION
libs=$cache/libs
run=${BFF_RUN_DIR:-$HOME/.cache/bff-template/local}/kafka
pidfile=$run/kafka.pid
logfile=$run/logs/kafka.out
start_timeout=${KAFKA_START_TIMEOUT:-120} # seconds; a loaded 2-core machine needs far more than a quiet one

# Kafka's published poms bring no logging backend and still use slf4j 1.7, so the binding is
# log4j-slf4j-impl (not log4j-slf4j2-impl). kafka-tools provides TopicCommand (used for the
# readiness check); its own dependencies (Connect runtime, Jetty, ...) are not needed for that.
pom() {
  cat <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.bff-template</groupId>
  <artifactId>kafka-libs</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version>
      <exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion></exclusions>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
}

# Download the jars unless the marker says the libs were completed from this very pom.
fetch_jars() {
  local marker=$libs/.complete
  if [[ -f $marker ]] && [[ $(cat "$marker") == "$(pom)" ]]; then
    return
  fi
  command -v mvn >/dev/null || die "kafka: mvn not found (needed once to fetch the Kafka jars)"
  log "kafka: fetching jars (first run only)..."
  local t0=$SECONDS
  mkdir -p "$cache"
  pom >"$cache/pom.xml"
  rm -rf "$libs" "$libs.tmp"
  if ! mvn -B -f "$cache/pom.xml" dependency:copy-dependencies -DoutputDirectory="$libs.tmp" \
    >"$cache/mvn.log" 2>&1; then
    tail -n 30 "$cache/mvn.log" >&2
    die "kafka: mvn failed to fetch the jars (full output: $cache/mvn.log)"
  fi
  mv "$libs.tmp" "$libs"
  pom >"$marker"
  log "kafka: fetched $(find "$libs" -name '*.jar' | wc -l) jars in $((SECONDS - t0))s"
}

# Runs a Java main class from the cached jars with a small, quick-starting JVM.
java_tool=(java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1
  -Dlog4j2.configurationFile="$run/log4j2.properties" -cp "$libs/*")

write_config() {
  mkdir -p "$run/data" "$run/logs"
  cat >"$run/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$run/data
auto.create.topics.enable=true
num.partitions=${KAFKA_NUM_PARTITIONS:-1}
default.replication.factor=1
min.insync.replicas=1
# Small internal topics and no rebalance delay: tests start consuming sooner.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  if [[ -n ${KAFKA_EXTRA_CONFIG:-} ]]; then
    [[ -r $KAFKA_EXTRA_CONFIG ]] || die "kafka: KAFKA_EXTRA_CONFIG=$KAFKA_EXTRA_CONFIG is not readable"
    cat "$KAFKA_EXTRA_CONFIG" >>"$run/server.properties"
  fi
  write_client_config
}

# Logging (broker and tools) to stderr at WARN, plus the "Kafka Server started" line;
# short client timeouts so a readiness probe fails fast instead of retrying for a minute.
write_client_config() {
  mkdir -p "$run"
  cat >"$run/log4j2.properties" <<EOF
appender.stderr.type=Console
appender.stderr.name=STDERR
appender.stderr.target=SYSTEM_ERR
appender.stderr.layout.type=PatternLayout
appender.stderr.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=${KAFKA_LOG_LEVEL:-WARN}
rootLogger.appenderRef.stderr.ref=STDERR
logger.started.name=kafka.server.KafkaRaftServer
logger.started.level=INFO
EOF
  cat >"$run/client.properties" <<EOF
request.timeout.ms=5000
default.api.timeout.ms=5000
EOF
}

# A client can list topics: the broker is really serving requests.
answering() {
  port_open "$port" &&
    timeout 20 "${java_tool[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" \
      --command-config "$run/client.properties" --list >/dev/null 2>&1
}

running() { pid_is "$(read_pid "$pidfile")" kafka.Kafka; }

status() {
  if running && answering; then
    log "kafka: running on $bootstrap (pid $(read_pid "$pidfile"))"
  elif running; then
    log "kafka: process $(read_pid "$pidfile") is up but not answering on $bootstrap"
    return 1
  else
    log "kafka: not running"
    return 1
  fi
}

fail_start() {
  log "kafka: $1; last lines of $logfile:"
  tail -n 40 "$logfile" >&2 || true
  exit 1
}

start() {
  local t0=$SECONDS
  if running; then
    if answering; then
      log "kafka: already running on $bootstrap (pid $(read_pid "$pidfile"))"
      return
    fi
    log "kafka: process $(read_pid "$pidfile") is up but not answering yet, waiting..."
  else
    command -v java >/dev/null || die "kafka: java not found (Kafka $KAFKA_VERSION needs Java 17+)"
    fetch_jars
    write_client_config
    if answering; then # started some other way (another checkout's script, a package): use it
      log "kafka: a broker already answers on $bootstrap (not started by this script); using it"
      return
    fi
    t0=$SECONDS
    write_config
    if [[ ! -f $run/data/meta.properties ]]; then
      log "kafka: formatting storage in $run/data"
      local -a format_args=()
      read -ra format_args <<<"${KAFKA_FORMAT_ARGS:-}"
      "${java_tool[@]}" kafka.tools.StorageTool format --standalone \
        -t "$("${java_tool[@]}" kafka.tools.StorageTool random-uuid)" -c "$run/server.properties" \
        "${format_args[@]}" >/dev/null
    fi
    port_open "$port" && die "kafka: port $port is already in use by another process"
    log "kafka: starting $KAFKA_VERSION on $bootstrap (log: $logfile)"
    echo "=== $(date -Is) starting kafka $KAFKA_VERSION" >>"$logfile"
    rm -f "$pidfile"
    # The inner shell records its pid, then becomes the JVM. KAFKA_HEAP_OPTS is split on purpose.
    # shellcheck disable=SC2016,SC2086
    nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" \
      java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g} -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -XX:+ExitOnOutOfMemoryError \
      -Djava.awt.headless=true -Dkafka.logs.dir="$run/logs" \
      -Dlog4j2.configurationFile="$run/log4j2.properties" \
      -cp "$libs/*" kafka.Kafka "$run/server.properties" >>"$logfile" 2>&1 </dev/null &
    wait_for 30 test -s "$pidfile" || fail_start "no pid file written within 30s"
  fi
  until answering; do
    running || fail_start "the broker exited during startup"
    ((SECONDS - t0 < start_timeout)) || fail_start "not answering on $bootstrap after ${start_timeout}s"
    sleep 0.5
  done
  log "kafka: ready on $bootstrap in $((SECONDS - t0))s"
}

stop() {
  if running; then
    log "kafka: stopping (pid $(read_pid "$pidfile"))"
  fi
  stop_pid "$(read_pid "$pidfile")" kafka.Kafka 30
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
  log "kafka: removed $run"
  ;;
topics)
  shift
  [[ -d $libs ]] || die "kafka: jars not fetched yet, run: $0 start"
  write_client_config
  exec "${java_tool[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" "$@"
  ;;
*) die "usage: $0 start|stop|status|restart|clean|topics ARGS..." ;;
esac
