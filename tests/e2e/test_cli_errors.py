"""`processor run` refuses a wrong setup with exit code 2 and a message that names the problem, and
stops cleanly (exit 0) on SIGTERM."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from tests.e2e.conftest import Spawner
from tests.e2e.harness import ProcessorProcess
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e

USAGE = 2  # ConfigurationError: the setup is wrong, retrying will not help


def _fails(proc: ProcessorProcess, timeout: float = 60.0) -> tuple[int, str]:
    code = proc.start().wait_exit(timeout)
    return code, proc.log()


def test_an_unknown_module_exits_2_naming_the_module(spawn: Spawner) -> None:
    code, log = _fails(spawn("nosuch.module:app", {}))
    assert code == USAGE
    assert "processor: cannot import module 'nosuch.module'" in log
    assert "Traceback" not in log


def test_an_unknown_attribute_exits_2_naming_it(spawn: Spawner) -> None:
    code, log = _fails(spawn("tests.apps.counter:nope", {}))
    assert code == USAGE
    assert "module 'tests.apps.counter' has no attribute 'nope'" in log


def test_an_attribute_that_is_not_an_app_exits_2(spawn: Spawner) -> None:
    code, log = _fails(spawn("tests.apps.counter:count", {}))
    assert code == USAGE
    assert "tests.apps.counter:count is a function, not a processor.App" in log


def test_an_unreachable_broker_exits_nonzero_within_30s_saying_so(spawn: Spawner, tmp_path: Path) -> None:
    proc = ProcessorProcess(spec="tests.apps.counter:app", bootstrap="127.0.0.1:1", state_dir=tmp_path / "s",
                            instance_id="i1", env={}, log_dir=tmp_path)
    spawn.procs.append(proc)
    started = time.monotonic()
    code, log = _fails(proc, timeout=45)
    assert code != 0
    assert time.monotonic() - started < 30
    assert "processor: cannot reach Kafka at 127.0.0.1:1" in log


def test_an_input_topic_whose_partitions_differ_from_the_inbox_exits_2(kafka: Kafka, spawn: Spawner) -> None:
    name = kafka.unique("copart")
    inp = kafka.create_topic(f"{name}-in", 2)
    kafka.create_topic(f"{name}.inbox", 3)
    code, log = _fails(spawn("tests.apps.counter:app", {"COUNTER_APP": name, "COUNTER_INPUT": inp}))
    assert code == USAGE
    assert "co-partitioning" in log
    assert f"'{inp}': 2" in log and f"'{name}.inbox': 3" in log


def test_a_missing_input_topic_exits_2_naming_it(kafka: Kafka, spawn: Spawner) -> None:
    name = kafka.unique("missing")
    code, log = _fails(spawn("tests.apps.counter:app", {"COUNTER_APP": name, "COUNTER_INPUT": f"{name}-in"}))
    assert code == USAGE
    assert f"input topic '{name}-in' does not exist" in log


def test_sigterm_stops_a_running_processor_with_exit_0(kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name = kafka.unique("sigterm")
    inp, out = kafka.create_topic(f"{name}-in", 2), kafka.create_topic(f"{name}-out", 2)
    proc = spawn("tests.apps.counter:app", {"COUNTER_APP": name, "COUNTER_INPUT": inp, "COUNTER_OUTPUT": out,
                                            "COUNTER_EFFECTS": str(tmp_path / "effects")}).start().wait_ready()
    kafka.produce(inp, [(b"k", orjson.dumps({"i": 0}))])
    wait_until(lambda: len(kafka.drain(out)) == 1, 60, "one output")
    assert proc.stop(timeout=30) == 0
    assert "instance i1 stopped" in proc.log()
    assert "abandoned" not in proc.log()


def test_sigterm_stops_a_processor_whose_step_body_is_blocked(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name = kafka.unique("sigterm")
    inp, out = kafka.create_topic(f"{name}-in", 1), kafka.create_topic(f"{name}-out", 1)
    proc = spawn("tests.apps.diverge:app", {"DIVERGE_APP": name, "DIVERGE_INPUT": inp,
                                            "DIVERGE_OUTPUT": out}).start().wait_ready()
    kafka.produce(inp, [(b"k", orjson.dumps({"n": 1, "gated": True}))])
    wait_until(lambda: len(kafka.drain(out)) == 1, 60, "the handler to reach its blocked step")
    assert proc.stop(timeout=30) == 0  # the blocked body reruns (at least once) on the next owner
    assert "instance i1 stopped" in proc.log()
    assert "still running, abandoned: step" in proc.log()


def test_a_second_processor_on_the_same_state_dir_exits_2_naming_the_holder(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name = kafka.unique("lock")
    inp, out = kafka.create_topic(f"{name}-in", 2), kafka.create_topic(f"{name}-out", 2)
    env = {"COUNTER_APP": name, "COUNTER_INPUT": inp, "COUNTER_OUTPUT": out,
           "COUNTER_EFFECTS": str(tmp_path / "effects")}
    first = spawn("tests.apps.counter:app", env).start().wait_ready()
    second = spawn("tests.apps.counter:app", env, instance_id="i2", state_dir=first.state_dir)
    code, log = _fails(second)
    assert code == USAGE
    assert f"is in use by pid {first.proc.pid if first.proc else '?'}" in log
    assert first.proc is not None and first.proc.poll() is None, "the first processor must keep running"
    assert first.stop() == 0
