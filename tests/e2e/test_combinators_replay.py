"""``gather`` and ``select`` replay identically when their steps finish in another order after a
SIGKILL: journal positions come from the call order, and select's winner is journaled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from processor._engine.core import Entry
from tests.e2e.conftest import Spawner
from tests.e2e.durable_support import Durable, run
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e

# Seconds each step body sleeps, per life of the processor (DURABLE_LIFE): life 2 flips the order.
GATHER_CUT = {"1": {"x": 60.0}, "2": {"y": 1.0, "sy": 0.3}}  # killed while x still runs
SELECT_DONE = {"1": {"x": 0.5, "sx": 1.0}, "2": {"y": 0.5, "sy": 1.0}}  # killed after the select


def _done(entries: list[Entry], name: str) -> bool:
    return any(e.name == name and e.completed for e in entries)


def test_gather_and_select_replay_the_journaled_outcome_when_completion_order_flips(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start({"DURABLE_LIFE": "1"}).wait_ready()

    async def invoke(ev: dict[str, Any]) -> str:
        async with d.client() as client:
            return await client.invoke("race/ordered", ev)
    g = run(invoke({"id": "g", "delays": GATHER_CUT}))
    s = run(invoke({"id": "s", "delays": SELECT_DONE}))

    # g: y (second in argument order) is journaled first; x is still running at the kill.
    d.wait_journal(g, lambda es: _done(es, "y") and not _done(es, "x"), "g's y to commit before x")
    # s: both gathered, the select won by y, and its loser x finished too; "hold" blocks on the gate.
    js = d.wait_journal(s, lambda es: any(e.kind == "select" for e in es) and _done(es, "sx"),
                        "s's select and both its branches to commit")
    [sel] = [e for e in js if e.kind == "select"]
    assert sel.value == b"y", "in life 1, sy finished first"
    positions = {e.name: e.seq for e in js if e.kind == "run"}
    assert positions == {"x": 0, "y": 1, "sx": 2, "sy": 3}, "positions follow the call order"
    assert not _done(d.journal(g), "x")
    d.proc.kill()

    d.gate.touch()
    d.proc.start({"DURABLE_LIFE": "2"}).wait_ready()
    wait_until(lambda: len([o for o in d.outputs() if "winner" in o]) == 2, 60, "both invocations to finish")
    assert d.proc.stop() == 0

    by_id = {o["id"]: o for o in d.outputs()}
    # g: gather kept argument order although y finished first in life 1 and x ran again in life 2.
    assert by_id["g"] == {"id": "g", "both": ["x:2", "y:1"], "winner": "x", "value": "sx:2"}
    # s: everything replayed; in life 2 sx would win, and argument order would pick x: y is kept.
    assert by_id["s"] == {"id": "s", "both": ["x:1", "y:1"], "winner": "y", "value": "sy:1"}
    assert len(d.outputs()) == 2
    effects = d.effects()
    assert {k: n for k, n in effects.items() if k.endswith(":s")} == {
        "x:s": 1, "y:s": 1, "sx:s": 1, "sy:s": 1, "hold:s": 1}, "nothing of s ran again"
    assert effects["y:g"] == 1 and effects["x:g"] == 1 and effects["hold:g"] == 1
    log = d.proc.log()
    assert "diverged" not in log and "NondeterminismError" not in log
    assert {r.status.value for r in d.rows_of("race/ordered")} == {"completed"}
