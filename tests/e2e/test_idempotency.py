"""An idempotency key names one invocation: calling with it again (even after a SIGKILL) returns the
first result without running the handler again; another key runs it again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Spawner
from tests.e2e.durable_support import TIMEOUT, Durable, run
from tests.kafka_support import Kafka

pytestmark = pytest.mark.e2e


def test_an_idempotency_key_returns_the_same_result_twice_and_runs_the_handler_once(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start().wait_ready()

    async def greet(key: str) -> Any:
        async with d.client() as client:
            return await client.call("once/greet", "ada", idempotency_key=key, timeout=TIMEOUT)
    first = run(greet("k"))
    assert first["hello"] == "ada"
    assert run(greet("k")) == first, "the same key answers with the first result"
    d.proc.kill()
    d.proc.start().wait_ready()
    assert run(greet("k")) == first, "and still does after a SIGKILL"
    assert d.effects() == {"greet:ada": 1}

    other = run(greet("k2"))
    assert other["hello"] == "ada" and other["token"] != first["token"], "another key is another invocation"
    assert d.effects() == {"greet:ada": 2}

    async def concurrently() -> list[Any]:
        return list(await asyncio.gather(*(greet("k3") for _ in range(3))))
    third = run(concurrently())
    assert third[0] == third[1] == third[2] and third[0]["token"] not in (first["token"], other["token"])
    assert d.proc.stop() == 0
    assert d.effects() == {"greet:ada": 3}
    assert sorted(r.idempotency_key or "" for r in d.rows_of("once/greet")) == ["k", "k2", "k3"]
