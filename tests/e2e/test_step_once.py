"""A committed step never runs again, even when its processor is SIGKILLed right after it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.e2e.conftest import Spawner
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
