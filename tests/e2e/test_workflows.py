"""A workflow's run happens once per key however often it is submitted (Client or topic), survives a
SIGKILL while it waits on its promise, and is unblocked by a shared handler resolving that promise."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Spawner
from tests.e2e.durable_support import TIMEOUT, Durable, run
from tests.kafka_support import Kafka

pytestmark = pytest.mark.e2e


def test_a_workflow_submitted_three_times_runs_once_and_its_promise_unblocks_it(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start().wait_ready()

    async def submit(plan: str) -> str:
        async with d.client() as client:
            return await client.submit_workflow("signup", "u1", {"plan": plan})
    first = run(submit("free"))
    assert run(submit("pro")) == first, "the same workflow key names the same invocation"
    d.produce("signups", "u1", {"plan": "topic"})
    d.wait_journal(first, lambda es: any(e.kind == "promise" and e.pending for e in es),
                   "the run to wait on its promise")
    d.proc.kill()  # the run waits on its promise across a SIGKILL
    d.proc.start().wait_ready()

    async def confirm_and_read() -> tuple[object, object, object]:
        async with d.client() as client:
            stage = await client.call("signup/confirm", "code-42", key="u1", timeout=TIMEOUT)
            out1 = await client.workflow_output("signup", "u1", timeout=TIMEOUT)
            await client.submit_workflow("signup", "u1", {"plan": "late"})
            out2 = await client.workflow_output("signup", "u1", timeout=TIMEOUT)
            return stage, out1, out2
    stage, out1, out2 = run(confirm_and_read())
    assert stage == "waiting", "the shared handler read the run's state while it waited"
    assert out1 == out2 == {"user": "u1", "plan": "free", "confirmed_with": "code-42"}
    assert d.proc.stop() == 0

    assert d.effects() == {"welcome:u1": 1}
    runs = d.rows_of("signup/run")
    assert [(r.id, r.status.value) for r in runs] == [(first, "completed")]
    confirms = d.rows_of("signup/confirm")
    assert [r.status.value for r in confirms] == ["completed"]
