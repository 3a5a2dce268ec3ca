"""A durable step never runs again, even when its processor is SIGKILLed right after it: committed,
or only acknowledged on the steps log."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from processor.state import keys
from tests.e2e.conftest import Spawner
from tests.e2e.verify import assert_gapless, counter_env, counter_events, counts_by_key
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e


def test_step_side_effect_runs_once_across_a_sigkill_after_its_commit(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name = kafka.unique("steps")
    inp, out = kafka.create_topic(f"{name}-in", 2), kafka.create_topic(f"{name}-out", 2)
    effects, gate = tmp_path / "effects", tmp_path / "gate"
    env = {"STEPS_APP": name, "STEPS_INPUT": inp, "STEPS_OUTPUT": out,
           "STEPS_EFFECTS": str(effects), "STEPS_GATE": str(gate)}
    proc = spawn("tests.apps.steps:app", env).start().wait_ready()
    kafka.produce(inp, [(b"o-1", orjson.dumps({"id": "o-1"}))])

    # The emit after step one is committed only after step one's result was released, i.e. durable.
    wait_until(lambda: any(b'"after"' in (r.value or b"") for r in kafka.drain(out)), 60,
               "step one to commit")
    proc.kill()
    assert effects.read_text().splitlines() == ["one:o-1"]

    gate.touch()
    proc.start().wait_ready()
    wait_until(lambda: any(b'"done"' in (r.value or b"") for r in kafka.drain(out)), 60, "the invocation to finish")
    proc.stop()

    assert effects.read_text().splitlines() == ["one:o-1", "two:o-1", "three:o-1"]
    outputs = [orjson.loads(r.value or b"") for r in kafka.drain(out)]
    assert outputs == [{"id": "o-1", "after": "one:o-1"},
                       {"id": "o-1", "done": ["one:o-1", "two:o-1", "three:o-1"]}]


def test_a_step_acknowledged_in_a_cycle_that_never_committed_is_not_run_again(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    """A step result is released when its `<app>.steps` record is acknowledged (decision 007), so the
    handler goes on within the cycle. When that cycle never commits (here: it hangs, then the process
    is SIGKILLed), the next start salvages the record: the replay returns it instead of running the
    body again, and the outputs stay exactly once. (The app's step comes after its state read: the
    replay reads the same, so it takes the salvaged result — decision 007, rule 7.)"""
    env, inp, out = counter_env(kafka, tmp_path)
    effects = Path(env["COUNTER_EFFECTS"])
    proc = spawn("tests.apps.counter:app", env)
    # The first cycles hold the partitions' step generations; the first one with the events' work hangs.
    proc.start({"PROCESSOR_TEST_FAULTS": "before_work_commit=1:hang"}).wait_ready()
    changelog = f"{env['COUNTER_APP']}.changelog"
    wait_until(lambda: {r.partition for r in kafka.drain(changelog) if r.key == keys.meta_key("steps-gen")}
               == {0, 1, 2, 3}, 60, "every partition's step generation to commit")
    kafka.produce(inp, counter_events(3, 3))
    wait_until(lambda: effects.exists() and len(effects.read_text().splitlines()) == 3, 60,
               "the three step bodies to run")
    proc.kill()
    assert kafka.drain(out) == [], "nothing committed: the cycle hung"

    proc.start().wait_ready()
    wait_until(lambda: len(kafka.drain(out)) >= 3, 60, "three outputs")
    assert proc.stop() == 0
    assert sorted(effects.read_text().splitlines()) == ["key-0 1", "key-1 1", "key-2 1"], \
        "a step body ran again although its result had been acknowledged"
    assert_gapless(counts_by_key(kafka.drain(out)), 1, 3)
