#!/usr/bin/env bash
# The main job: a local Kafka broker started for you and the order demo run against it.
#   ./deploy/demo.sh [demo options]     e.g. --orders 50 (see python -m examples.orders.demo --help)
# The broker is stopped at the end if (and only if) this script started it, also on failure.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

started_broker=0
cleanup() {
  if [ "$started_broker" = 1 ]; then
    echo "== stopping the broker this script started"
    deploy/kafka/broker.sh stop || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if deploy/kafka/broker.sh status >/dev/null 2>&1; then
  echo "== using the Kafka broker already running on port ${KAFKA_PORT:-19092} (left running)"
else
  started_broker=1
  echo "== starting a local Kafka broker (first run downloads it from Maven Central)"
fi
bootstrap="$(deploy/kafka/broker.sh start)"
echo "== Kafka broker ready at $bootstrap"
echo
python -m examples.orders.demo --bootstrap-servers "$bootstrap" "$@"
