"""A workflow's run happens once per key however often it is submitted (Client or topic), survives a
SIGKILL while it waits on its promise, and is unblocked by a shared handler resolving that promise."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor._engine.core import Failure
from tests.e2e.conftest import Spawner
from tests.e2e.durable_support import TIMEOUT, Durable, run
from tests.kafka_support import Kafka, wait_until

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


EXPECTED_U1 = {"user": "u1", "plan": "free", "confirmed_with": "code-7"}


def test_invoking_a_workflows_run_by_target_attaches_to_the_one_run_of_its_key_and_its_id_reaches_it(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start().wait_ready()

    async def start_u1() -> tuple[str, str]:
        async with d.client() as client:
            first = await client.submit_workflow("signup", "u1", {"plan": "free"})
            return first, await client.invoke("signup/run", {"plan": "pro"}, key="u1")
    first, by_target = run(start_u1())
    assert by_target != first, "the Client names its own id; the engine resolves it to the run"
    d.wait_journal(first, lambda es: any(e.kind == "promise" and e.pending for e in es),
                   "the run to wait on its promise")

    async def finish_u1() -> tuple[object, object]:
        async with d.client() as client:
            await client.call("signup/confirm", "code-7", key="u1", timeout=TIMEOUT)
            by_id = await client.result(by_target, timeout=TIMEOUT)
            by_call = await client.call("signup/run", {"plan": "late"}, key="u1", timeout=TIMEOUT)
            return by_id, by_call
    by_id, by_call = run(finish_u1())
    assert by_id == EXPECTED_U1, "result(id of the invoke) is the first run's result"
    assert by_call == EXPECTED_U1, "a call after the run finished gets its result"
    assert d.effects() == {"welcome:u1": 1}, "the run executed once"

    async def start_by_target(key: str) -> str:
        async with d.client() as client:
            return await client.invoke("signup/run", {"plan": "x"}, key=key)
    u2, u3 = run(start_by_target("u2")), run(start_by_target("u3"))
    for key in ("u2", "u3"):
        wait_until(lambda k=key: d.effects()[f"welcome:{k}"] == 1, 60, f"{key}'s run to start")

    async def cancel_u2_kill_u3() -> list[BaseException]:
        errors: list[BaseException] = []
        async with d.client() as client:
            await client.cancel(u2)
            await client.kill(u3)
            for wf_key, inv in (("u2", u2), ("u3", u3)):
                for read in (client.result(inv, timeout=TIMEOUT),
                             client.workflow_output("signup", wf_key, timeout=TIMEOUT)):
                    try:
                        await read
                    except Exception as e:
                        errors.append(e)
        return errors
    errors = run(cancel_u2_kill_u3())
    assert [type(e).__name__ for e in errors] == ["InvocationCancelled"] * 2 + ["InvocationKilled"] * 2, errors
    assert d.proc.stop() == 0

    runs = {r.key: r for r in d.rows_of("signup/run")}
    assert sorted(runs) == ["u1", "u2", "u3"], "one run per workflow key"
    assert runs["u1"].id == first
    assert [(runs[k].status.value, (runs[k].failure or Failure(type="", message="")).type)
            for k in ("u2", "u3")] == [("failed", "Cancelled"), ("failed", "Killed")]
    assert d.effects() == {"welcome:u1": 1, "welcome:u2": 1, "welcome:u3": 1}
