#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft, broker+controller in one JVM) on 127.0.0.1, built from
# Maven Central jars: no Docker, no .tgz.
# Usage: broker.sh start|stop|status|logs [N]|fetch|reset|user NAME PASSWORD|kafka-acls ARGS...
#
# Environment:
#   KAFKA_VERSION   (4.1.1)          the org.apache.kafka:kafka_2.13 version to run
#   KAFKA_PORT      (19092)          client port; the controller listens on KAFKA_PORT+1
#   KAFKA_CACHE     (~/.cache/processor-kafka)  where jars are cached (shared by all work dirs)
#   KAFKA_WORK      (<repo>/.kafka/<port>)      config, data, logs and pid of this broker
#   KAFKA_START_TIMEOUT (120)        seconds to wait for readiness
#   KAFKA_SECURITY  (plaintext)      plaintext, or sasl_ssl: the client listener speaks TLS (a CA made
#                                    here, in KAFKA_WORK/tls) and SCRAM-SHA-512, and the KRaft
#                                    StandardAuthorizer denies what no ACL allows. Fixed when the
#                                    work dir is first formatted (`reset` to change it).
#   KAFKA_ADMIN_PASSWORD (admin-secret)  sasl_ssl: password of the super user `admin`
#
# With sasl_ssl, `start` also writes KAFKA_WORK/admin.properties (Java clients' --command-config for
# kafka-acls.sh / kafka-configs.sh) and KAFKA_WORK/admin-librdkafka.properties (`processor run
# --kafka-config`), both for `admin`. `user NAME PASSWORD` creates or updates a SCRAM-SHA-512 user;
# `kafka-acls ARGS...` runs Kafka's kafka-acls tool as `admin` against this broker (its jar is
# fetched once). See docs/security.md.
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
TOOLS="$CACHE/tools-$KAFKA_VERSION"
TLS="$WORK/tls"
STOREPASS="processor-local"          # key and trust stores of this local test broker only
ADMIN_PASSWORD="${KAFKA_ADMIN_PASSWORD:-admin-secret}"
BROKER_DN="CN=processor-local-broker"  # the broker's certificate: its principal on the controller listener

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

# The security mode of this work dir: what it was formatted with, else KAFKA_SECURITY.
security() {
  if [ -f "$WORK/security" ]; then cat "$WORK/security"; else echo "${KAFKA_SECURITY:-plaintext}"; fi
}

# A CA of our own and a broker certificate it signs (SAN 127.0.0.1 and localhost), made with keytool
# (Java 17 brings it). The broker presents it to clients and, on the controller listener (mutual
# TLS), to itself.
make_tls() {
  [ -f "$TLS/.complete" ] && return 0
  command -v keytool >/dev/null || die "keytool (Java 17+) is needed to make the TLS certificates"
  rm -rf "$TLS"
  mkdir -p "$TLS"
  local kt=(keytool -storetype PKCS12 -storepass "$STOREPASS" -keypass "$STOREPASS")
  {
    "${kt[@]}" -genkeypair -keystore "$TLS/ca.p12" -alias ca -dname "CN=processor-local-ca" \
      -keyalg RSA -keysize 2048 -validity 3650 -ext bc:c
    "${kt[@]}" -exportcert -rfc -keystore "$TLS/ca.p12" -alias ca -file "$TLS/ca.pem"
    "${kt[@]}" -genkeypair -keystore "$TLS/broker.p12" -alias broker -dname "$BROKER_DN" \
      -keyalg RSA -keysize 2048 -validity 3650
    "${kt[@]}" -certreq -keystore "$TLS/broker.p12" -alias broker -file "$TLS/broker.csr"
    "${kt[@]}" -gencert -keystore "$TLS/ca.p12" -alias ca -infile "$TLS/broker.csr" -outfile "$TLS/broker.pem" \
      -rfc -validity 3650 -ext SAN=IP:127.0.0.1,DNS:localhost -ext KU=digitalSignature,keyEncipherment \
      -ext EKU=serverAuth,clientAuth
    "${kt[@]}" -importcert -noprompt -keystore "$TLS/broker.p12" -alias ca -file "$TLS/ca.pem"
    "${kt[@]}" -importcert -noprompt -keystore "$TLS/broker.p12" -alias broker -file "$TLS/broker.pem"
    "${kt[@]}" -importcert -noprompt -keystore "$TLS/truststore.p12" -alias ca -file "$TLS/ca.pem"
  } >"$TLS/keytool.log" 2>&1 || { cat "$TLS/keytool.log" >&2; die "making the TLS certificates failed"; }
  touch "$TLS/.complete"
}

listener_config() {
  if [ "$(security)" = plaintext ]; then
    cat <<PROPS
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
PROPS
    return
  fi
  # Clients and the broker itself on SASL_SSL (SCRAM-SHA-512; the broker as `admin`); the controller
  # listener on mutual TLS, where the broker is the principal of its certificate. Both are super users.
  cat <<PROPS
listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$ADMIN_PASSWORD";
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS/broker.p12
ssl.keystore.password=$STOREPASS
ssl.key.password=$STOREPASS
ssl.truststore.type=PKCS12
ssl.truststore.location=$TLS/truststore.p12
ssl.truststore.password=$STOREPASS
listener.name.controller.ssl.client.auth=required
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:$BROKER_DN
allow.everyone.if.no.acl.found=false
PROPS
}

write_client_configs() {
  [ "$(security)" = plaintext ] && return 0
  cat >"$WORK/admin.properties" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$ADMIN_PASSWORD";
ssl.truststore.type=PKCS12
ssl.truststore.location=$TLS/truststore.p12
ssl.truststore.password=$STOREPASS
PROPS
  cat >"$WORK/admin-librdkafka.properties" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.username=admin
sasl.password=$ADMIN_PASSWORD
ssl.ca.location=$TLS/ca.pem
PROPS
  chmod 600 "$WORK/admin.properties" "$WORK/admin-librdkafka.properties"
}

write_config() {
  mkdir -p "$WORK/data" "$WORK/logs"
  case "$(security)" in
    plaintext) ;;
    sasl_ssl) make_tls ;;
    *) die "KAFKA_SECURITY must be plaintext or sasl_ssl, not $(security)" ;;
  esac
  cat >"$WORK/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
$(listener_config)
controller.listener.names=CONTROLLER
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
  if [ -f "$WORK/security" ] && [ -n "${KAFKA_SECURITY:-}" ] && [ "$KAFKA_SECURITY" != "$(security)" ]; then
    die "$WORK was formatted for $(security), not $KAFKA_SECURITY; run '$0 reset' first"
  fi
  fetch
  write_config
  local cp="$LIBS/*"
  if [ ! -f "$WORK/data/meta.properties" ]; then
    local scram=()
    # SCRAM credentials live in the cluster metadata: the broker's own user must be there before
    # the broker can authenticate to itself, so it is written at format time.
    [ "$(security)" = sasl_ssl ] && scram=(--add-scram "SCRAM-SHA-512=[name=admin,password=$ADMIN_PASSWORD]")
    java -Xmx256m -cp "$cp" -Dlog4j2.configurationFile="$WORK/log4j2.properties" \
      -Dkafka.logs.dir="$WORK/logs" kafka.tools.StorageTool format \
      -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)" \
      -c "$WORK/server.properties" "${scram[@]}" >"$WORK/logs/format.log" 2>&1 \
      || { cat "$WORK/logs/format.log" >&2; die "formatting KRaft storage failed"; }
    local mode
    mode="$(security)"
    echo "$mode" >"$WORK/security"
  fi
  write_client_configs
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
  say "ready (pid $(cat "$PIDFILE"), $(security), data in $WORK)"
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
    echo "running pid=$(cat "$PIDFILE") bootstrap=127.0.0.1:$KAFKA_PORT security=$(security)"
  else
    echo "stopped"
    return 3
  fi
}

need_sasl() {
  [ "$(security)" = sasl_ssl ] || die "$1 needs a broker started with KAFKA_SECURITY=sasl_ssl"
  pid_alive || die "the broker on port $KAFKA_PORT is not running"
}

# Create or update SCRAM-SHA-512 user NAME (kafka-configs, run as admin).
user() {
  [ $# -eq 2 ] || die "usage: $0 user NAME PASSWORD"
  need_sasl "user"
  java -Xmx256m -cp "$LIBS/*" -Dlog4j2.configurationFile="$WORK/log4j2.properties" -Dkafka.logs.dir="$WORK/logs" \
    kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --command-config "$WORK/admin.properties" \
    --alter --entity-type users --entity-name "$1" --add-config "SCRAM-SHA-512=[password=$2]" \
    >"$WORK/logs/user.log" 2>&1 || { cat "$WORK/logs/user.log" >&2; die "creating user $1 failed"; }
  say "user $1 (SCRAM-SHA-512) set"
}

# Kafka's kafka-acls (org.apache.kafka.tools.AclCommand) as admin against this broker: its jar alone,
# fetched once, runs on the broker's classpath.
kafka_acls() {
  need_sasl "kafka-acls"
  if [ ! -f "$TOOLS/.complete" ]; then
    mkdir -p "$CACHE"
    local tmp
    tmp="$(mktemp -d "$CACHE/fetch.XXXXXX")"
    mvn -B -q dependency:copy -Dartifact="org.apache.kafka:kafka-tools:$KAFKA_VERSION" -DoutputDirectory="$tmp/libs" \
      || { rm -rf "$tmp"; die "Maven could not fetch kafka-tools $KAFKA_VERSION"; }
    rm -rf "$TOOLS"
    mv "$tmp/libs" "$TOOLS"
    rm -rf "$tmp"
    touch "$TOOLS/.complete"
  fi
  java -Xmx256m -cp "$TOOLS/*:$LIBS/*" -Dlog4j2.configurationFile="$WORK/log4j2.properties" \
    -Dkafka.logs.dir="$WORK/logs" org.apache.kafka.tools.AclCommand \
    --bootstrap-server "127.0.0.1:$KAFKA_PORT" --command-config "$WORK/admin.properties" "$@"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  logs) tail -n "${2:-100}" "$LOG" ;;
  fetch) fetch ;;
  reset) stop; rm -rf "$WORK"; say "removed $WORK" ;;
  user) shift; user "$@" ;;
  kafka-acls) shift; kafka_acls "$@" ;;
  *) echo "usage: $0 start|stop|status|logs [N]|fetch|reset|user NAME PASSWORD|kafka-acls ARGS..." >&2; exit 2 ;;
esac
