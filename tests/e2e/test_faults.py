"""Several instances under real faults: a frozen instance whose partitions moved, broker restarts, a
transactional call that never returns, a revoke during a stuck commit, one slow restore. Every output
is checked with a read_committed reader against what was produced."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import orjson
import pytest

from processor._engine.routing import partition_for_key
from processor.state import keys
from tests.chaos.broker import OwnBroker, free_port_pair
from tests.e2e.conftest import Spawner
from tests.e2e.harness import ProcessorProcess
from tests.e2e.verify import counts_by_key
from tests.kafka_support import Kafka, _warm, wait_until

pytestmark = pytest.mark.e2e

PARTITIONS = 4


def _owned(proc: ProcessorProcess) -> set[int]:
    """The partitions of the instance's latest assignment, from its log."""
    found = re.findall(r"assigned partitions \[([\d, ]*)\]", proc.log())
    return {int(x) for x in found[-1].split(",") if x.strip()} if found else set()


def _ready_count(proc: ProcessorProcess) -> int:
    return len(re.findall(r"assigned partitions \[[\d, ]*\]", proc.log()))


def _counter(kafka: Kafka, tmp_path: Path) -> tuple[dict[str, str], str, str]:
    name = kafka.unique("counter")
    inp, out = kafka.create_topic(f"{name}-in", PARTITIONS), kafka.create_topic(f"{name}-out", PARTITIONS)
    return {"COUNTER_APP": name, "COUNTER_INPUT": inp, "COUNTER_OUTPUT": out,
            "COUNTER_EFFECTS": str(tmp_path / "effects")}, inp, out


def _events(start: int, n: int, keys_: int) -> list[tuple[bytes | None, bytes | None]]:
    return [(f"key-{i % keys_}".encode(), orjson.dumps({"i": i})) for i in range(start, start + n)]


def _assert_counts(kafka: Kafka, out: str, per_key: int, keys_: int) -> None:
    counts = counts_by_key(kafka.drain(out, timeout=60))
    assert len(counts) == keys_
    bad = {k: v for k, v in counts.items() if v != list(range(1, per_key + 1))}
    assert not bad, f"keys with gaps or duplicates: {dict(list(bad.items())[:4])}"


def _stop_all(*procs: ProcessorProcess) -> None:
    for p in procs:
        assert p.proc is not None
        assert p.proc.poll() is None, f"{p.instance_id} exited with {p.proc.returncode}:\n{p.log()[-3000:]}"
    for p in procs:
        t0 = time.monotonic()
        assert p.stop(timeout=45) == 0, p.log()[-3000:]
        assert time.monotonic() - t0 < 40


def test_a_frozen_instance_whose_partitions_moved_commits_nothing_when_it_wakes(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name = kafka.unique("slow")
    inp, out = kafka.create_topic(f"{name}-in", PARTITIONS), kafka.create_topic(f"{name}-out", PARTITIONS)
    effects = tmp_path / "effects"
    env = {"SLOW_APP": name, "SLOW_INPUT": inp, "SLOW_OUTPUT": out, "SLOW_EFFECTS": str(effects)}
    i1 = spawn("tests.apps.slowstep:app", env, instance_id="i1", state_dir=tmp_path / "state1")
    i2 = spawn("tests.apps.slowstep:app", env, instance_id="i2", state_dir=tmp_path / "state2")
    # On waking, i1 learns it lost its partitions only 8 s later (as when its poll loop is busy): the
    # window in which a zombie's timers and steps could commit.
    i1.start({"PROCESSOR_TEST_FAULTS": "on_lost=1:sleep8"}).wait_ready()
    i2.start()
    wait_until(lambda: _owned(i1) and _owned(i2) and _owned(i1) | _owned(i2) == set(range(PARTITIONS)),
               90, "the partitions to be split between both instances")
    ids = [f"ev-{n}" for n in range(16)]
    on_i1 = [i for i in ids if partition_for_key(i.encode(), PARTITIONS) in _owned(i1)]
    assert on_i1, "no event lands on the instance to be frozen"
    kafka.produce(inp, [(i.encode(), orjson.dumps({"id": i, "seconds": 2.0})) for i in ids])

    def started() -> set[str]:
        return {line.split(":", 1)[1] for line in effects.read_text().split()} if effects.exists() else set()
    wait_until(lambda: started() >= set(on_i1), 60, "the frozen instance's step bodies to start")
    # Frozen mid-step: its bodies finish after it wakes, when its partitions belong to i2.
    before = _ready_count(i1)
    os.kill(i1.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        wait_until(lambda: {o["id"] for o in _outputs(kafka, out)} >= set(ids), 120, "every output")
    finally:
        os.kill(i1.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
    wait_until(lambda: _ready_count(i1) > before, 120, "the woken instance to rejoin and get partitions again")
    assert "fault point on_lost: sleeping" in i1.log()
    # Work after the wake-up, on every partition: a zombie commit would have skewed some store.
    late = [f"late-{n}" for n in range(16)]
    kafka.produce(inp, [(i.encode(), orjson.dumps({"id": i, "seconds": 0})) for i in late])
    wait_until(lambda: {o["id"] for o in _outputs(kafka, out)} >= set(late), 120, "the late outputs")
    # ... and a second hand-over, so stores written while frozen are read again.
    assert i2.stop() == 0
    wait_until(lambda: _owned(i1) == set(range(PARTITIONS)), 90, "i1 to own every partition")
    again = [f"again-{n}" for n in range(16)]
    kafka.produce(inp, [(i.encode(), orjson.dumps({"id": i, "seconds": 0})) for i in again])
    wait_until(lambda: {o["id"] for o in _outputs(kafka, out)} >= set(again), 120, "the outputs after i2 left")

    emitted: dict[str, int] = {}
    for o in _outputs(kafka, out):
        emitted[o["id"]] = emitted.get(o["id"], 0) + 1
    twice = {i: n for i, n in emitted.items() if n != 1}
    assert not twice, f"emitted more than once (a woken instance committed after its partitions moved): {twice}"
    assert set(emitted) == set(ids) | set(late) | set(again)
    _stop_all(i1)


def _outputs(kafka: Kafka, out: str) -> list[dict[str, str]]:
    return [orjson.loads(r.value or b"") for r in kafka.drain(out)]


@pytest.fixture
def own_broker(tmp_path: Path) -> OwnBroker:
    b = OwnBroker(tmp_path / "broker", free_port_pair(19392 + 40))
    b.start()
    yield b  # type: ignore[misc]
    b.stop()


def test_instances_ride_out_broker_restarts_clean_and_by_sigkill(own_broker: OwnBroker, tmp_path: Path) -> None:
    kafka = _warm(Kafka(bootstrap=own_broker.bootstrap, origin="own broker"))
    env, inp, out = _counter(kafka, tmp_path)
    spawn = Spawner(kafka, tmp_path)
    procs = [spawn("tests.apps.counter:app", env, instance_id=f"i{n}", state_dir=tmp_path / f"state{n}")
             for n in (1, 2)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready(90)
        batch, keys_ = 100, 20
        kafka.produce(inp, _events(0, batch, keys_))
        wait_until(lambda: len(kafka.drain(out)) >= batch, 120, "the first batch")
        # Outages longer than the 6 s session timeout, one by SIGKILL of the broker JVM.
        for n, (down, kill) in enumerate([(9.0, False), (10.0, True), (8.0, False)], start=1):
            (own_broker.kill if kill else own_broker.stop)()
            time.sleep(down)  # the outage itself: the processors must ride it out
            own_broker.start()
            kafka = _warm(Kafka(bootstrap=own_broker.bootstrap, origin="own broker"))
            kafka.produce(inp, _events(n * batch, batch, keys_))
            wait_until(lambda n=n, k=kafka: len(k.drain(out)) >= (n + 1) * batch, 180,
                       f"the batch after restart {n}", interval=1.0)
        _assert_counts(kafka, out, 4 * batch // keys_, keys_)
        _stop_all(*procs)
    finally:
        for p in procs:
            p.ensure_dead()


def _until_stuck(kafka: Kafka, inp: str, out: str, proc: ProcessorProcess) -> int:
    """Produce batches of 100 events (10 keys) until a commit hangs at the fault point; returns how
    many were produced. A batch is only produced once the previous one came out or the hang began."""
    produced = 0
    for _ in range(6):
        kafka.produce(inp, _events(produced, 100, 10))
        produced += 100
        wait_until(lambda n=produced: "hanging for good" in proc.log() or len(kafka.drain(out)) >= n, 120,
                   "a batch's outputs or the stuck commit")
        if "hanging for good" in proc.log():
            return produced
    raise AssertionError("no commit reached the fault point")


def test_a_transactional_call_that_never_returns_is_abandoned_and_processing_goes_on(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    env, inp, out = _counter(kafka, tmp_path)
    proc = spawn("tests.apps.counter:app", env)
    # The 3rd send_offsets_to_transaction blocks for good, as librdkafka #5456 does.
    proc.start({"PROCESSOR_TEST_FAULTS": "before_send_offsets=3:hang"}).wait_ready()
    produced = _until_stuck(kafka, inp, out, proc)
    kafka.produce(inp, _events(produced, 100, 10))
    wait_until(lambda: len(kafka.drain(out)) >= produced + 100, 120, "every output after the stuck commit")
    assert "did not return within" in proc.log()
    _assert_counts(kafka, out, (produced + 100) // 10, 10)
    _stop_all(proc)


def test_a_revoke_during_a_stuck_commit_never_closes_the_store_under_it(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    env, inp, out = _counter(kafka, tmp_path)
    i1 = spawn("tests.apps.counter:app", env, instance_id="i1", state_dir=tmp_path / "state1")
    i2 = spawn("tests.apps.counter:app", env, instance_id="i2", state_dir=tmp_path / "state2")
    i1.start({"PROCESSOR_TEST_FAULTS": "before_send_offsets=3:hang"}).wait_ready()
    produced = _until_stuck(kafka, inp, out, i1)
    i2.start()  # the rebalance revokes i1's partitions while its commit is stuck
    wait_until(lambda: len(kafka.drain(out)) >= produced, 120, "every output")
    kafka.produce(inp, _events(produced, 200, 10))
    wait_until(lambda: len(kafka.drain(out)) >= produced + 200, 120, "every output after the rebalance")
    for p in (i1, i2):
        assert "StoreClosedError" not in p.log() and "is closed" not in p.log(), p.log()[-3000:]
    _assert_counts(kafka, out, (produced + 200) // 10, 10)
    _stop_all(i1, i2)


def test_one_partition_held_back_by_an_open_transaction_does_not_stop_the_others(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    env, inp, out = _counter(kafka, tmp_path)
    changelog = kafka.create_topic(f"{env['COUNTER_APP']}.changelog", PARTITIONS,
                                   {"cleanup.policy": "compact"})
    # A dead instance's transaction still open on changelog partition 0: its LSO is pinned there.
    with kafka.transactional_producer(**{"transaction.timeout.ms": 120_000}) as zombie:
        zombie.begin_transaction()
        zombie.produce(changelog, key=keys.meta_key("left-open"), value=b"x", partition=0)
        zombie.flush(10)
        proc = spawn("tests.apps.counter:app", env).start()
        names = [f"key-{i}" for i in range(20)]
        held = [k for k in names if partition_for_key(k.encode(), PARTITIONS) == 0]
        free = [k for k in names if k not in held]
        assert held and free
        kafka.produce(inp, [(k.encode(), orjson.dumps({"i": 0})) for k in names])

        def free_done() -> bool:
            return set(counts_by_key(kafka.drain(out))) >= set(free)
        wait_until(free_done, 60, "the outputs of partitions 1-3 while partition 0 restores")
        assert not set(counts_by_key(kafka.drain(out))) & set(held), "partition 0 ran before its restore"
        zombie.abort_transaction(30)
    wait_until(lambda: set(counts_by_key(kafka.drain(out))) == set(names), 60, "partition 0 after the abort")
    _stop_all(proc)


def test_a_commit_whose_outcome_was_unknown_is_not_rewound_by_the_ownership_check(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    """A commit cycle that committed in Kafka but whose call never returned (abandoned at its deadline)
    is in the changelog and the group's offsets; the rebuild's ownership check must not move those
    offsets back to the ones before it, or its records are read again: dead letters written twice."""
    env, inp, out = _counter(kafka, tmp_path)
    dlq = f"{env['COUNTER_APP']}.dlq"
    proc = spawn("tests.apps.counter:app", env)
    # The 2nd cycle commits in Kafka, then its lane never returns.
    proc.start({"PROCESSOR_TEST_FAULTS": "after_kafka_commit=2:hang"}).wait_ready()
    kafka.produce(inp, [(b"key-0", b"not json 0")])
    wait_until(lambda: len(kafka.drain(dlq)) == 1, 60, "the first dead letter")
    kafka.produce(inp, [(b"key-0", f"not json {i}".encode()) for i in range(1, 11)])
    proc.wait_log("hanging for good")
    proc.wait_log("did not return within", timeout=30)
    kafka.produce(inp, [(b"key-0", orjson.dumps({"i": 0}))])  # behind them: once it is out, they were read
    wait_until(lambda: counts_by_key(kafka.drain(out)).get("key-0") == [1], 90, "the good record's output")
    letters = [r.value for r in kafka.drain(dlq)]
    assert sorted(letters) == sorted(f"not json {i}".encode() for i in range(11)), letters
    _stop_all(proc)
