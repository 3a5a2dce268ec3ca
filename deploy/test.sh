#!/usr/bin/env bash
# The whole test suite from a fresh machine: venv + install, lint, types, a real Kafka broker, pytest.
# Extra arguments go to pytest (e.g. deploy/test.sh tests/unit -q).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
# tests/e2e/test_web_ui.py drives Debian's chromium (Playwright given its path: no browser download).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "== apt-get install chromium"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
echo "== ruff"; ruff check processor state timers schemas tests benchmarks examples
echo "== mypy --strict"; mypy
# Tests get their own broker port so a running demo broker is never touched.
export KAFKA_PORT="${KAFKA_PORT:-19192}"
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  if ! deploy/kafka/broker.sh status >/dev/null 2>&1; then
    # A broker this script starts is the tests' own: start it empty, so topics from earlier runs
    # never pile up (thousands of partitions make a restart slow).
    deploy/kafka/broker.sh reset >/dev/null 2>&1 || true
    trap 'deploy/kafka/broker.sh stop' EXIT
  fi
  deploy/kafka/broker.sh start >/dev/null
fi
echo "== pytest"
python -m pytest "$@"
