"""`processor run --workers 2`: a supervisor and two engine processes of the counter app on a real
broker. Both get partitions and count exactly once; a SIGKILLed worker is restarted; the workers of
a SIGKILLed supervisor exit; SIGTERM stops everything with exit 0; a configuration error ends it."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from processor._cli import WORKERS_STOP_S
from processor._engine.statedir import lock_state_dir
from tests.chaos.verify import unconsumed
from tests.e2e.conftest import Spawner
from tests.e2e.harness import ProcessorProcess, process_alive
from tests.e2e.verify import assert_gapless, counter_env, counter_events, counts_by_key, produce_paced, read_state
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e

PARTITIONS, EVENTS, KEYS = 4, 2000, 40
IDS = ("i1-w0", "i1-w1")  # the harness starts the supervisor with --instance-id i1
_STARTED = re.compile(r"worker (\d+) \(pid (\d+), instance \S+\) started")
_READY = re.compile(r"\[(\S+)\] processor\.engine: assigned partitions \[([\d, ]*)\] ready")


def _pids(proc: ProcessorProcess) -> dict[int, int]:
    """The pid of each worker's latest start, from the supervisor's log."""
    return {int(i): int(pid) for i, pid in _STARTED.findall(proc.log())}


def _owned(proc: ProcessorProcess) -> dict[str, set[int]]:
    """The partitions of each worker's latest ready assignment, from the supervisor's log."""
    return {iid: {int(p) for p in ps.split(",") if p.strip()} for iid, ps in _READY.findall(proc.log())}


def _split(proc: ProcessorProcess) -> bool:
    """Both workers own partitions, none twice, all of them."""
    if proc.proc is not None and proc.proc.poll() is not None:
        raise AssertionError(f"supervisor exited with {proc.proc.returncode}:\n{proc.log()[-4000:]}")
    owned = _owned(proc)
    if set(owned) != set(IDS) or not all(owned.values()):
        return False
    a, b = owned.values()
    return not a & b and a | b == set(range(PARTITIONS))


def _outputs(kafka: Kafka, out: str, n: int, timeout: float) -> None:
    """Wait for `n` committed outputs; a drain reads the whole topic, so not too often."""
    wait_until(lambda: len(kafka.drain(out)) >= n, timeout, f"{n} outputs", interval=0.5)


def _start_two(kafka: Kafka, spawn: Spawner, tmp_path: Path) -> tuple[ProcessorProcess, dict[str, str], str, str]:
    env, inp, out = counter_env(kafka, tmp_path, PARTITIONS)
    proc = spawn("tests.apps.counter:app", env, workers=2).start()
    wait_until(lambda: _split(proc), 90, "both workers to own a share of the partitions")
    return proc, env, inp, out


def test_two_workers_share_the_partitions_and_count_exactly_once(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    proc, env, inp, out = _start_two(kafka, spawn, tmp_path)
    owned = _owned(proc)
    app = env["COUNTER_APP"]
    for i, iid in enumerate(IDS):  # each worker keeps its partitions' stores in its own state dir
        assert all((tmp_path / "state" / f"worker-{i}" / app / str(p)).is_dir() for p in owned[iid])
    assert not (tmp_path / "state" / app / "0").exists(), "the supervisor runs no engine of its own"

    kafka.produce(inp, counter_events(EVENTS, KEYS))
    _outputs(kafka, out, EVENTS, 180)
    assert proc.stop() == 0

    assert_gapless(counts_by_key(kafka.drain(out)), EVENTS // KEYS, KEYS)
    states = [read_state(tmp_path / "state" / f"worker-{i}", app, "counter", "count", owned[iid])
              for i, iid in enumerate(IDS)]
    assert all(states), "both workers counted keys"
    assert {**states[0], **states[1]} == {f"key-{k}": EVENTS // KEYS for k in range(KEYS)}


def test_a_sigkilled_worker_is_restarted_and_the_counts_stay_exactly_once(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    proc, env, inp, out = _start_two(kafka, spawn, tmp_path)
    producer = threading.Thread(target=produce_paced, args=(kafka, inp, counter_events(EVENTS, KEYS), 10.0),
                                daemon=True)
    producer.start()
    _outputs(kafka, out, EVENTS // 4, 120)
    victim = _pids(proc)[0]
    signal_sent = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    seen_at_kill = len(kafka.drain(out))

    wait_until(lambda: _pids(proc)[0] != victim, 30, "the supervisor to start worker 0 again")
    assert f"worker 0 (pid {victim}, instance i1-w0) died: killed by SIGKILL" in proc.log()
    assert time.monotonic() - signal_sent >= 1.0, "the first restart waits the first backoff"
    assert process_alive(_pids(proc)[1]), "the other worker kept running"
    producer.join(120)
    _outputs(kafka, out, EVENTS, 180)
    wait_until(lambda: not unconsumed(kafka.bootstrap, env["COUNTER_APP"], [inp], PARTITIONS), 60,
               "the group's lag on the input to reach 0")
    assert proc.stop() == 0

    assert seen_at_kill < EVENTS, "the kill landed while work was outstanding"
    assert_gapless(counts_by_key(kafka.drain(out)), EVENTS // KEYS, KEYS)


def test_the_workers_of_a_sigkilled_supervisor_exit_and_a_new_supervisor_takes_over(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    proc, _env, inp, out = _start_two(kafka, spawn, tmp_path)
    workers = list(_pids(proc).values())
    assert len(workers) == 2 and all(map(process_alive, workers))
    proc.kill()
    wait_until(lambda: not any(map(process_alive, workers)), WORKERS_STOP_S, "the dead supervisor's workers to exit")
    assert "instance i1-w0 stopped" in proc.log() and "instance i1-w1 stopped" in proc.log(), "they stopped cleanly"

    again = proc.start()  # same state dir and instance id; a log of its own
    wait_until(lambda: _split(again), 90, "the new supervisor's workers to own the partitions")
    kafka.produce(inp, counter_events(400, 20))
    _outputs(kafka, out, 400, 120)
    assert again.stop() == 0
    assert_gapless(counts_by_key(kafka.drain(out)), 20, 20)


def test_a_new_supervisor_waits_for_a_worker_state_dir_still_held_by_a_stopping_process(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    env, _inp, _out = counter_env(kafka, tmp_path, PARTITIONS)
    held = tmp_path / "state" / "worker-1" / env["COUNTER_APP"]
    held.mkdir(parents=True)
    lock = lock_state_dir(held)  # as an orphan of a SIGKILLed supervisor does while it stops
    try:
        proc = spawn("tests.apps.counter:app", env, workers=2).start()
        wait_until(lambda: "waiting up to" in proc.log(), 30, "the supervisor to wait for the held state dir")
        time.sleep(1.0)  # long enough for a supervisor that does not wait to start its workers
        assert not _STARTED.findall(proc.log()), "no worker starts while a state dir is held"
    finally:
        lock.close()
    wait_until(lambda: _split(proc), 90, "the workers to own the partitions once the state dir is free")
    assert proc.stop() == 0


def test_sigterm_stops_every_worker_and_the_supervisor_exits_0_within_the_bound(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    proc, _env, inp, out = _start_two(kafka, spawn, tmp_path)
    kafka.produce(inp, counter_events(200, 20))
    _outputs(kafka, out, 200, 120)
    workers = list(_pids(proc).values())
    started = time.monotonic()
    assert proc.stop(timeout=WORKERS_STOP_S + 5) == 0
    assert time.monotonic() - started < WORKERS_STOP_S
    assert not any(map(process_alive, workers))
    log = proc.log()
    assert "instance i1-w0 stopped" in log and "instance i1-w1 stopped" in log
    for i, iid in enumerate(IDS):
        assert f"worker {i} (pid {workers[i]}, instance {iid}) stopped: exit code 0" in log
    assert "died" not in log


def test_a_workers_configuration_error_ends_the_supervisor_with_exit_2_without_restarts(
        kafka: Kafka, spawn: Spawner) -> None:
    name = kafka.unique("missing")
    proc = spawn("tests.apps.counter:app", {"COUNTER_APP": name, "COUNTER_INPUT": f"{name}-in"}, workers=2)
    assert proc.start().wait_exit(60) == 2
    log = proc.log()
    assert f"input topic '{name}-in' does not exist" in log
    assert "exited with a configuration error (exit code 2): stopping all workers" in log
    assert len(_STARTED.findall(log)) == 2, "no worker was restarted"


def test_an_app_that_does_not_load_exits_2_before_any_worker_starts(spawn: Spawner) -> None:
    proc = spawn("nosuch.module:app", {}, workers=2)
    assert proc.start().wait_exit(60) == 2
    assert "processor: cannot import module 'nosuch.module'" in proc.log()
    assert not _STARTED.findall(proc.log())
