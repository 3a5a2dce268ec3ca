#!/usr/bin/env bash
# The main job: a local Kafka broker started for you and the demo app processing events.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
bootstrap="$(deploy/kafka/broker.sh start)"
echo "Kafka broker ready at $bootstrap (stop it with: deploy/kafka/broker.sh stop)"
echo "The engine is not built yet; the demo app arrives with it."
