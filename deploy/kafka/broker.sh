#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft, broker+controller in one JVM) on 127.0.0.1, built from
# Maven Central jars: no Docker, no .tgz. Usage: broker.sh start|stop|status|logs|fetch
#
# Environment:
#   KAFKA_VERSION   (4.1.1)          the org.apache.kafka:kafka_2.13 version to run
#   KAFKA_PORT      (19092)          client port; the controller listens on KAFKA_PORT+1
#   KAFKA_CACHE     (~/.cache/processor-kafka)  where jars are cached (shared by all work dirs)
#   KAFKA_WORK      (<repo>/.kafka/<port>)      config, data, logs and pid of this broker
#   KAFKA_START_TIMEOUT (120)        seconds to wait for readiness
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
CONTROLLER_PORT=$((KAFKA_PORT + 1))
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/processor-kafka}"
LIBS="$CACHE/libs-$KAFKA_VERSION"
WORK="${KAFKA_WORK:-$REPO/.kafka/$KAFKA_PORT}"
PIDFILE="$WORK/broker.pid"
LOG="$WORK/logs/server.log"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"

say() { printf 'broker.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

fetch() {
  [ -f "$LIBS/.complete" ] && return 0
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Kafka jars; install it (apt-get install maven)"
  command -v java >/dev/null || die "Java 17+ is needed to run Kafka; install it (apt-get install openjdk-17-jre-headless)"
  say "fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its runtime dependencies from Maven Central (once)"
  mkdir -p "$CACHE"
  local tmp
  tmp="$(mktemp -d "$CACHE/fetch.XXXXXX")"
  sed "s/@KAFKA_VERSION@/$KAFKA_VERSION/" "$HERE/pom.xml" >"$tmp/pom.xml"
  mvn -B -q -f "$tmp/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$tmp/libs" || { rm -rf "$tmp"; die "Maven could not fetch Kafka $KAFKA_VERSION"; }
  ls "$tmp/libs" | grep -q '^log4j-slf4j-impl-' \
    || { rm -rf "$tmp"; die "no SLF4J binding among the fetched jars; the broker would log nothing"; }
  rm -rf "$LIBS"
  mv "$tmp/libs" "$LIBS"
  rm -rf "$tmp"
  touch "$LIBS/.complete"
  say "jars cached in $LIBS"
}

pid_alive() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

write_config() {
  mkdir -p "$WORK/data" "$WORK/logs"
  cat >"$WORK/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
log.dirs=$WORK/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
transaction.abort.timed.out.transaction.cleanup.interval.ms=2000
log.cleaner.backoff.ms=1000
log.cleaner.dedupe.buffer.size=33554432
num.network.threads=2
num.io.threads=4
PROPS
  cat >"$WORK/log4j2.properties" <<'PROPS'
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
PROPS
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  if pid_alive; then
    say "already running (pid $(cat "$PIDFILE"))"
    echo "127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process; set KAFKA_PORT"
  fetch
  write_config
  local cp="$LIBS/*"
  if [ ! -f "$WORK/data/meta.properties" ]; then
    java -Xmx256m -cp "$cp" -Dlog4j2.configurationFile="$WORK/log4j2.properties" \
      -Dkafka.logs.dir="$WORK/logs" kafka.tools.StorageTool format \
      -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)" \
      -c "$WORK/server.properties" >"$WORK/logs/format.log" 2>&1 \
      || { cat "$WORK/logs/format.log" >&2; die "formatting KRaft storage failed"; }
  fi
  local offset=0
  [ -f "$LOG" ] && offset=$(wc -c <"$LOG")
  nohup java -server -Xms256m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$WORK/log4j2.properties" -Dkafka.logs.dir="$WORK/logs" \
    -cp "$cp" kafka.Kafka "$WORK/server.properties" >"$WORK/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! pid_alive; then
      say "the broker JVM exited during start-up; last log lines:"
      tail -n 40 "$LOG" "$WORK/logs/stdout.log" >&2 2>/dev/null || true
      rm -f "$PIDFILE"
      exit 1
    fi
    if [ -f "$LOG" ] && tail -c +"$((offset + 1))" "$LOG" | grep -q 'Kafka Server started' \
       && port_open "$KAFKA_PORT"; then
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "not ready within ${START_TIMEOUT}s; last log lines:"
      tail -n 40 "$LOG" >&2 2>/dev/null || true
      stop >/dev/null 2>&1 || true
      exit 1
    fi
    sleep 0.3
  done
  say "ready (pid $(cat "$PIDFILE"), data in $WORK)"
  echo "127.0.0.1:$KAFKA_PORT"
}

stop() {
  if ! pid_alive; then
    rm -f "$PIDFILE"
    say "not running"
    return 0
  fi
  local pid
  pid="$(cat "$PIDFILE")"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    say "no exit after SIGTERM within 30s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$PIDFILE"
  say "stopped (pid $pid)"
}

status() {
  if pid_alive; then
    echo "running pid=$(cat "$PIDFILE") bootstrap=127.0.0.1:$KAFKA_PORT"
  else
    echo "stopped"
    return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  logs) tail -n "${2:-100}" "$LOG" ;;
  fetch) fetch ;;
  reset) stop; rm -rf "$WORK"; say "removed $WORK" ;;
  *) echo "usage: $0 start|stop|status|logs [N]|fetch|reset" >&2; exit 2 ;;
esac
