"""Finished invocations are purged after the app's retention: their status and journal rows leave
LMDB and the changelog gets a tombstone for each, so a restore does not bring them back."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import orjson
import pytest

from processor._engine.records import InvocationRow, Status
from processor.state import keys
from tests.e2e import rows
from tests.e2e.conftest import Spawner
from tests.e2e.verify import read_state
from tests.kafka_support import Kafka, Record, wait_until

pytestmark = pytest.mark.e2e


def _finished(changelog: list[Record]) -> dict[str, InvocationRow]:
    """Each invocation's last non-tombstone row value in the changelog, if it finished."""
    last: dict[str, InvocationRow] = {}
    for r in changelog:
        if r.key is not None and r.key.startswith(keys.INVOCATION) and r.value is not None:
            row = InvocationRow.decode(r.value)
            last[row.id] = row
    return {i: row for i, row in last.items() if row.status.terminal}


def test_finished_invocations_are_purged_from_lmdb_and_tombstoned_in_the_changelog_after_retention(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name = kafka.unique("retention")
    inp, out = kafka.create_topic(f"{name}-in", 2), kafka.create_topic(f"{name}-out", 2)
    changelog, state_dir = f"{name}.changelog", tmp_path / "state"
    proc = spawn("tests.apps.retention:app", {"RETENTION_APP": name, "RETENTION_INPUT": inp,
                                              "RETENTION_OUTPUT": out}).start().wait_ready()
    kafka.produce(inp, [(f"k{i % 3}".encode(), orjson.dumps({"i": i})) for i in range(6)])
    wait_until(lambda: len(kafka.drain(out)) >= 6, 60, "six outputs")

    finished = _finished(kafka.drain(changelog))
    assert len(finished) == 6 and all(r.status is Status.COMPLETED for r in finished.values())
    journaled = {r.key for r in kafka.drain(changelog)
                 if r.key is not None and r.key.startswith(keys.JOURNAL) and r.value is not None}
    assert {keys.parse_journal_key(k)[0] for k in journaled} == set(finished), "every invocation journaled"

    wait_until(lambda: not rows.invocations(state_dir, name) and rows.journal_rows(state_dir, name) == 0,
               30, "invocation and journal rows to leave LMDB")
    last_finish = max(r.finished_ms or 0 for r in finished.values())
    assert time.time() * 1000 >= last_finish + 2000, "purged before the two-second retention passed"

    def tombstoned() -> set[bytes]:
        return {r.key for r in kafka.drain(changelog) if r.key is not None and r.value is None}
    wanted = journaled | {keys.invocation_key(i) for i in finished}
    wait_until(lambda: wanted <= tombstoned(), 30, "changelog tombstones for every purged row")
    assert proc.stop() == 0
    assert read_state(state_dir, name, "counter", "count") == {"k0": 2, "k1": 2, "k2": 2}, \
        "retention purges invocations, never object state"

    shutil.rmtree(state_dir)  # a full restore from the changelog must not resurrect purged rows
    proc.start().wait_ready()
    proc.wait_log("restored")
    assert proc.stop() == 0
    assert rows.invocations(state_dir, name) == [] and rows.journal_rows(state_dir, name) == 0
    assert read_state(state_dir, name, "counter", "count") == {"k0": 2, "k1": 2, "k2": 2}
