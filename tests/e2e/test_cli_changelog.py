"""With no live instance and no --state-dir, the CLI reads a small app's state from its changelog
topic: the committed state of every partition, whichever instance last owned it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.e2e.conftest import Spawner
from tests.e2e.test_cluster_cli import Cli
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e

KEYS = ["a", "b", "c", "d", "e"]


def test_with_no_instance_the_cli_materializes_the_changelog(kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name = kafka.unique("clilog")
    inp, out = kafka.create_topic(f"{name}-in", 3), kafka.create_topic(f"{name}-out", 3)
    proc = spawn("tests.apps.counter:app", {"COUNTER_APP": name, "COUNTER_INPUT": inp,
                                            "COUNTER_OUTPUT": out}).start().wait_ready()
    events = [(k.encode(), orjson.dumps({"n": i})) for i, k in enumerate(KEYS * 3) if not (k == "e" and i > 5)]
    kafka.produce(inp, events)
    wait_until(lambda: len(kafka.drain(out)) == len(events), 90, "every event counted")
    assert proc.stop() == 0
    want = {k: sum(1 for key, _ in events if key == k.encode()) for k in KEYS}

    cli = Cli(kafka, name)
    for k in KEYS:
        r = cli.run("state", "counter", k, "--json")
        assert r.returncode == 0, r.stderr
        assert orjson.loads(r.stdout)["state"] == {"count": want[k]}
        assert f"reading the app's state from changelog {name}.changelog" in r.stderr
    code, rows, err = cli.json_lines("invocations")
    assert code == 0, err
    assert rows == [], "invocations from topic records leave no row once finished (journal_retention 0)"

    r = cli.run("state", "counter", "a", "--max-changelog-records", "1")
    assert r.returncode == 3
    assert f"{name}.changelog holds" in r.stderr and "more than --max-changelog-records 1" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli.run("state", "counter", "zz", "--json")
    assert r.returncode == 1 and "no state of counter/zz" in r.stderr
