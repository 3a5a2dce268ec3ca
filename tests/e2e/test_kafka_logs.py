"""librdkafka's own lines reach Python logging rate-limited: a processor pointed at an address where
no broker listens logs a bounded number of them (not one per reconnect of every client), and with
``--log-format json`` every line it writes is one JSON object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.harness import ProcessorProcess

pytestmark = pytest.mark.e2e


def test_a_dead_bootstrap_address_gives_a_bounded_number_of_broker_lines_all_json(tmp_path: Path) -> None:
    proc = ProcessorProcess(spec="tests.apps.counter:app", bootstrap="127.0.0.1:1", state_dir=tmp_path / "s",
                            instance_id="dead-1", env={"COUNTER_APP": "logs"}, log_dir=tmp_path,
                            args=("--log-format", "json"))
    try:
        code = proc.start().wait_exit(45)  # the engine gives up on an unreachable cluster after 15 s
    finally:
        proc.ensure_dead()
    lines = proc.log().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert code == 2, lines[-5:]
    broker = [r for r in records if r["logger"] == "processor.librdkafka"]
    assert 1 <= len(broker) <= 3, broker  # one line per kind of failure per 30 s, from all clients together
    assert "127.0.0.1:1" in broker[0]["message"] and broker[0]["level"] in ("ERROR", "WARNING")
    assert broker[0]["kafka_facility"] and broker[0]["kafka_client"].startswith("rdkafka#")
    final = records[-1]
    assert final["level"] == "ERROR" and "cannot reach Kafka at 127.0.0.1:1" in final["message"], final
    assert final["app"] == "logs" and final["instance"] == "dead-1"
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
