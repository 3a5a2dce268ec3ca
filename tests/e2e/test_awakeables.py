"""An awakeable completed from outside (Client) while no processor runs completes its handler after
the restart; a rejection is raised in the handler as a TerminalError."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Spawner
from tests.e2e.durable_support import Durable, run
from tests.kafka_support import Kafka

pytestmark = pytest.mark.e2e


def test_an_awakeable_resolved_while_the_processor_is_down_completes_the_handler_after_restart(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start().wait_ready()
    d.produce("asks", "yes", {"id": "yes"})
    d.produce("asks", "no", {"id": "no"})
    yes = d.wait_output("yes", "awakeable")["awakeable"]
    no = d.wait_output("no", "awakeable")["awakeable"]
    d.proc.kill()

    async def decide() -> None:
        async with d.client() as client:
            await client.resolve_awakeable(yes, {"by": "alice"})
            await client.reject_awakeable(no, "over budget")
    run(decide())

    d.proc.start().wait_ready()
    assert d.wait_output("yes", "approved") == {"id": "yes", "approved": {"by": "alice"}}
    assert d.wait_output("no", "rejected") == {"id": "no", "rejected": "over budget"}
    assert d.proc.stop() == 0
    assert d.effects() == {"approved:yes": 1}
    finals = sorted((o for o in d.outputs() if "awakeable" not in o), key=lambda o: str(o["id"]))
    assert finals == [{"id": "no", "rejected": "over budget"}, {"id": "yes", "approved": {"by": "alice"}}]
    statuses = {r.id: r.status.value for r in d.rows_of("approval/ask")}
    assert sorted(statuses.values()) == ["completed", "completed"]


def test_resolving_an_awakeable_twice_keeps_the_first_value(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start().wait_ready()
    d.produce("asks", "twice", {"id": "twice"})
    awk = d.wait_output("twice", "awakeable")["awakeable"]

    async def decide() -> None:
        async with d.client() as client:
            await client.resolve_awakeable(awk, "first")
            await client.resolve_awakeable(awk, "second")
    run(decide())
    assert d.wait_output("twice", "approved") == {"id": "twice", "approved": "first"}
    assert d.proc.stop() == 0
    assert d.effects() == {"approved:twice": 1}
    assert [o for o in d.outputs_of("twice") if "approved" in o] == [{"id": "twice", "approved": "first"}]
