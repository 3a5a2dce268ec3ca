"""Exactly-once under SIGKILL: a per-key counter keeps gapless, duplicate-free counts."""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Spawner
from tests.e2e.verify import assert_gapless, counter_env, counter_events, counts_by_key, produce_paced, read_state
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e

EVENTS, KEYS, KILLS = 10_000, 100, 5


def test_counts_stay_gapless_and_unique_across_repeated_sigkills(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    env, inp, out = counter_env(kafka, tmp_path)
    proc = spawn("tests.apps.counter:app", env).start().wait_ready()
    # Paced over ~30 s, so every kill (at up to 85 % of the outputs) lands while work is outstanding.
    events = counter_events(EVENTS, KEYS)
    producer = threading.Thread(target=produce_paced, args=(kafka, inp, events, 30.0), daemon=True)
    producer.start()
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    print(f"chaos seed {seed}")
    # Kill at random points of the run: after a random share of the outputs, plus a random delay.
    targets = sorted(rng.uniform(0.05, 0.85) * EVENTS for _ in range(KILLS))
    seen_before_kill = []
    for target in targets:
        wait_until(lambda t=target: len(kafka.drain(out)) >= t, 120, f"{int(target)} outputs")
        time.sleep(rng.uniform(0, 0.3))
        proc.kill()
        seen_before_kill.append(len(kafka.drain(out)))
        proc.start().wait_ready()
    producer.join(120)
    wait_until(lambda: len(kafka.drain(out)) >= EVENTS, 240, f"{EVENTS} outputs")
    assert proc.stop() == 0
    print(f"outputs committed at each kill: {seen_before_kill}")
    assert all(n < EVENTS for n in seen_before_kill), "a kill landed after the work was done"

    counts = counts_by_key(kafka.drain(out))
    assert_gapless(counts, EVENTS // KEYS, KEYS)
    state = read_state(tmp_path / "state", env["COUNTER_APP"], "counter", "count")
    assert state == {f"key-{k}": EVENTS // KEYS for k in range(KEYS)}


def test_deleting_the_state_dir_restores_identical_state_from_the_changelog(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    env, inp, out = counter_env(kafka, tmp_path)
    proc = spawn("tests.apps.counter:app", env).start().wait_ready()
    kafka.produce(inp, counter_events(500, 20))
    wait_until(lambda: len(kafka.drain(out)) >= 500, 120, "500 outputs")
    assert proc.stop() == 0
    before = read_state(tmp_path / "state", env["COUNTER_APP"], "counter", "count")
    assert before == {f"key-{k}": 25 for k in range(20)}

    shutil.rmtree(tmp_path / "state")
    proc.start().wait_ready()
    proc.wait_log("restored")
    kafka.produce(inp, counter_events(20, 20))  # one more event per key continues from the restored count
    wait_until(lambda: len(kafka.drain(out)) >= 520, 120, "520 outputs")
    assert proc.stop() == 0
    assert_gapless(counts_by_key(kafka.drain(out)), 26, 20)
    assert read_state(tmp_path / "state", env["COUNTER_APP"], "counter", "count") == {
        f"key-{k}": 26 for k in range(20)}


def test_a_crash_between_kafka_commit_and_lmdb_apply_is_repaired_from_the_changelog_tail(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    env, inp, out = counter_env(kafka, tmp_path)
    proc = spawn("tests.apps.counter:app", env)
    # The 10th commit succeeds in Kafka, then the process dies before writing LMDB. The input is
    # paced: a step does not wait for a commit, so a burst could finish in fewer cycles than that.
    proc.start({"PROCESSOR_TEST_FAULTS": "after_kafka_commit=10"}).wait_ready()
    producer = threading.Thread(target=produce_paced, args=(kafka, inp, counter_events(400, 10), 8.0), daemon=True)
    producer.start()
    assert proc.wait_exit(120) == -9
    committed = len(kafka.drain(out))
    assert 0 < committed < 400

    proc.start().wait_ready()
    producer.join(60)
    proc.wait_log("restored")  # the store was behind the changelog: its tail was replayed
    wait_until(lambda: len(kafka.drain(out)) >= 400, 120, "400 outputs")
    assert proc.stop() == 0
    assert_gapless(counts_by_key(kafka.drain(out)), 40, 10)
    assert read_state(tmp_path / "state", env["COUNTER_APP"], "counter", "count") == {
        f"key-{k}": 40 for k in range(10)}
