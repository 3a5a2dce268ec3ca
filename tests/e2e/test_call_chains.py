"""Calls between handlers on different partitions are exactly-once: A → B → C with the processor
SIGKILLed while C runs completes with every callee run once and one answer; C's TerminalError is
raised in A."""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

from processor._engine import routing
from processor._engine.core import invocation_id_for_record
from tests.e2e.conftest import Spawner
from tests.e2e.durable_support import PARTITIONS, Durable
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e


def _chain_partitions(topic: str, ev_id: str) -> tuple[int, int, int]:
    """Where A (the record's invocation), B (object b-<id>) and C (B's callee) of a chain will live,
    for the first record on its partition (A calls at journal position 1, and so does B)."""
    pa = routing.partition_for_key(ev_id.encode(), PARTITIONS)
    a = invocation_id_for_record(topic, pa, 0)
    pb = routing.partition_for_key(f"b-{ev_id}".encode(), PARTITIONS)
    b = routing.invocation_id(pb, "call", a, "1")
    pc = routing.target_partition(None, "\0".join(("call", b, "1")), PARTITIONS)
    return pa, pb, pc


def test_a_call_chain_across_partitions_completes_once_after_a_sigkill_mid_chain(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    topic = d.topics["chains"]
    ev_id = next(f"chain-{i}" for i in range(1000) if len(set(_chain_partitions(topic, f"chain-{i}"))) == 3)
    d.proc.start().wait_ready()
    d.produce("chains", ev_id, {"id": ev_id, "gated": True})

    # C's step body blocks on the gate: kill once it is running (B's step is journaled by then).
    wait_until(lambda: any(r.target == "c/leaf" for r in d.invocations()), 60, "C to be invoked")
    wait_until(lambda: d.effects() == {f"a:{ev_id}": 1, f"b:{ev_id}": 1}, 30, "A's and B's steps")
    d.proc.kill()
    assert not d.outputs()

    d.gate.touch()
    d.proc.start().wait_ready()
    d.wait_output(ev_id, "chain")
    assert d.proc.stop() == 0

    assert d.effects() == {f"a:{ev_id}": 1, f"b:{ev_id}": 1, f"c:{ev_id}": 1}
    assert d.outputs() == [{"id": ev_id, "chain": {"b": f"b-{ev_id}", "c": ev_id}}], "exactly one answer"
    by_target = {r.target: r for r in d.invocations()}
    a, b, c = by_target["a/top"], by_target["b/middle"], by_target["c/leaf"]
    assert (b.caller_id, c.caller_id) == (a.id, b.id)
    assert len({routing.partition_of(r.id) for r in (a, b, c)}) == 3, "three partitions"
    assert [routing.partition_of(r.id) for r in (a, b, c)] == list(_chain_partitions(topic, ev_id))
    assert len(d.invocations()) == 3, "no callee was invoked twice"
    assert {r.status.value for r in (a, b, c)} == {"completed"}


def test_a_terminal_error_in_the_last_callee_is_raised_in_the_first_caller(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    d = Durable(kafka, spawn, tmp_path)
    d.proc.start().wait_ready()
    d.produce("chains", "bad", {"id": "bad", "fail": True})
    out = d.wait_output("bad", "chain")
    assert out == {"id": "bad", "chain": {"error": "c refuses bad"}}
    assert d.proc.stop() == 0
    by_target = {r.target: r for r in d.invocations()}
    assert by_target["c/leaf"].failure is not None and by_target["c/leaf"].failure.message == "c refuses bad"
    assert by_target["b/middle"].status.value == "failed", "B did not catch it: it failed with C's error"
    assert by_target["a/top"].status.value == "completed", "A caught it"
    assert d.effects() == {"a:bad": 1, "b:bad": 1, "c:bad": 1}


def test_many_call_chains_answer_exactly_once_across_repeated_sigkills(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    chains, kills = 60, 3
    d = Durable(kafka, spawn, tmp_path, suspend_s=0.5)
    d.proc.start().wait_ready()
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    print(f"chaos seed {seed}")
    d.kafka.produce(d.topics["chains"], [(f"m{i}".encode(), orjson.dumps({"id": f"m{i}", "fail": i % 7 == 0}))
                                         for i in range(chains)])
    for target in sorted(rng.uniform(0.1, 0.8) * chains for _ in range(kills)):
        wait_until(lambda t=target: len(d.outputs()) >= t, 60, f"{int(target)} answers")
        time.sleep(rng.uniform(0, 0.2))
        d.proc.kill()
        d.proc.start().wait_ready()
    wait_until(lambda: len(d.outputs()) >= chains, 90, "every chain to answer")
    assert d.proc.stop() == 0

    got = sorted((o["id"], "error" in o["chain"]) for o in d.outputs())
    assert got == sorted((f"m{i}", i % 7 == 0) for i in range(chains)), f"seed {seed}: one answer per chain"
    by_target: dict[str, list[str]] = {}
    for r in d.invocations():
        by_target.setdefault(r.target, []).append(r.status.value)
    assert {t: len(v) for t, v in by_target.items()} == {"a/top": chains, "b/middle": chains, "c/leaf": chains}
    assert sorted(by_target["a/top"]) == ["completed"] * chains
    assert sorted(by_target["c/leaf"]).count("failed") == len(range(0, chains, 7))
