"""The workers supervisor (processor/_workers.py) with fake worker commands: restarts with backoff,
configuration errors, stops, parent death. Real child processes, no broker."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor._cli import build_parser
from processor._engine.statedir import lock_state_dir
from processor._workers import RestartPolicy, Supervisor, WorkerSpec, wait_until_unlocked, worker_specs
from tests.e2e.harness import process_alive
from tests.kafka_support import wait_until

# A fake worker. Appends "start <pid> <time>" to its log; the first FAILS starts exit with CODE; later
# ones run until SIGTERM (appending "sigterm <pid>" and exiting 0) or, with "ignore", until killed.
FAKE = textwrap.dedent("""
    import os, pathlib, signal, sys, time
    log, fails, code, on_term = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    starts = len(log.read_text().splitlines()) if log.exists() else 0
    def term(*_):
        with log.open("a") as f:
            f.write(f"sigterm {os.getpid()}\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if on_term == "ignore" else term)
    with log.open("a") as f:
        f.write(f"start {os.getpid()} {time.time()}\\n")
    if starts < fails:
        time.sleep(0.3)
        sys.exit(code)
    time.sleep(60)
""")
FAST = RestartPolicy(first_s=0.2, max_s=1.0, reset_after_s=60.0)


def _fake(tmp: Path, index: int, *, fails: int = 0, code: int = 1, on_term: str = "exit") -> WorkerSpec:
    log = tmp / f"w{index}.log"
    return WorkerSpec(index=index, instance_id=f"x-w{index}", state_dir=tmp / f"worker-{index}",
                      argv=(sys.executable, "-c", FAKE, str(log), str(fails), str(code), on_term))


def _lines(tmp: Path, index: int, kind: str) -> list[list[str]]:
    path = tmp / f"w{index}.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [ln.split()[1:] for ln in lines if ln.startswith(kind + " ")]


class _Running:
    """A supervisor running on a thread, so the test can watch it and stop it."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.sup.run()

    def result(self, timeout: float) -> int | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the supervisor did not return within {timeout}s"
        return self.code


@pytest.fixture
def running() -> Iterator[list[_Running]]:
    started: list[_Running] = []
    yield started
    for r in started:  # a failed test must not leave fake workers behind
        r.sup.request_stop()
        r.thread.join(15)


def _supervise(running: list[_Running], specs: list[WorkerSpec], *, stop_s: float = 10.0) -> _Running:
    r = _Running(Supervisor(specs, stop_s=stop_s, policy=FAST))
    running.append(r)
    return r


def test_restart_delays_double_up_to_the_cap_and_start_over_after_a_long_run() -> None:
    policy = RestartPolicy()
    delays, previous = [], None
    for _ in range(7):
        previous = policy.next_delay(previous, ran_s=2.0)
        delays.append(previous)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.next_delay(30.0, ran_s=60.0) == 1.0


def test_a_worker_that_dies_is_restarted_after_a_growing_backoff(tmp_path: Path, running: list[_Running]) -> None:
    r = _supervise(running, [_fake(tmp_path, 0, fails=2, code=1)])
    wait_until(lambda: len(_lines(tmp_path, 0, "start")) == 3, 15, "the third start")
    starts = [float(t) for _pid, t in _lines(tmp_path, 0, "start")]
    # each failed run lasts 0.3 s, then waits 0.2 s and 0.4 s
    assert starts[1] - starts[0] >= 0.5
    assert starts[2] - starts[1] >= 0.7
    r.sup.request_stop()
    assert r.result(15) == 0
    assert len(_lines(tmp_path, 0, "sigterm")) == 1


def test_a_configuration_error_stops_every_worker_and_is_the_supervisors_exit_code(
        tmp_path: Path, running: list[_Running]) -> None:
    r = _supervise(running, [_fake(tmp_path, 0, fails=1000, code=2), _fake(tmp_path, 1)])
    assert r.result(15) == 2
    assert len(_lines(tmp_path, 0, "start")) == 1, "a configuration error is never restarted"
    [(pid, _t)] = _lines(tmp_path, 1, "start")
    assert not process_alive(int(pid)), "the healthy worker was stopped too"


def test_stop_sends_sigterm_to_every_worker_and_returns_0_when_all_stopped_cleanly(
        tmp_path: Path, running: list[_Running]) -> None:
    r = _supervise(running, [_fake(tmp_path, 0), _fake(tmp_path, 1)])
    wait_until(lambda: all(_lines(tmp_path, i, "start") for i in (0, 1)), 15, "both workers to start")
    r.sup.request_stop()
    assert r.result(15) == 0
    for i in (0, 1):
        [(pid, _t)] = _lines(tmp_path, i, "start")
        assert _lines(tmp_path, i, "sigterm") == [[pid]]


def test_a_worker_that_ignores_sigterm_is_killed_at_the_stop_bound(tmp_path: Path, running: list[_Running]) -> None:
    r = _supervise(running, [_fake(tmp_path, 0, on_term="ignore")], stop_s=1.0)
    wait_until(lambda: _lines(tmp_path, 0, "start"), 15, "the worker to start")  # SIG_IGN is set by then
    r.sup.request_stop()
    assert r.result(10) == 128 + signal.SIGKILL
    [(pid, _t)] = _lines(tmp_path, 0, "start")
    assert not process_alive(int(pid))


# A supervisor stand-in that starts one worker stand-in arming die_with_parent, prints its pid, waits.
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
    print(child.pid, flush=True)
    time.sleep(60)
""")
CHILD = textwrap.dedent("""
    import os, pathlib, sys, time
    from processor._workers import die_with_parent
    assert die_with_parent(os.getppid())
    pathlib.Path(sys.argv[1]).write_text("armed")
    time.sleep(60)
""")


def test_a_worker_gets_sigterm_and_exits_when_its_supervisor_is_sigkilled(tmp_path: Path) -> None:
    armed = tmp_path / "armed"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(armed)], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        wait_until(armed.exists, 15, "the child to arm its parent-death signal")
        parent.kill()
        parent.wait(10)
        wait_until(lambda: not process_alive(child), 10, "the orphaned child to exit")
    finally:
        parent.kill()
        parent.wait(10)


def test_worker_specs_give_each_worker_its_instance_id_state_dir_and_one_engine(tmp_path: Path) -> None:
    specs = worker_specs(app_spec="m:app", bootstrap="h:1", state_dir=tmp_path, base_id="abc", log_level="INFO",
                         workers=3)
    assert [(s.instance_id, s.state_dir) for s in specs] == [
        (f"abc-w{i}", tmp_path / f"worker-{i}") for i in range(3)]
    args = build_parser().parse_args(list(specs[2].argv[3:]))  # past `python -m processor`
    assert (args.app, args.workers, args.instance_id, args.state_dir) == ("m:app", 1, "abc-w2",
                                                                          str(tmp_path / "worker-2"))
    assert args.supervisor_pid is not None


def test_every_worker_gets_the_supervisors_log_format_and_kafka_config_file(tmp_path: Path) -> None:
    specs = worker_specs(app_spec="m:app", bootstrap="h:1", state_dir=tmp_path, base_id="abc", log_level="INFO",
                         workers=2, extra=("--log-format", "json", "--kafka-config", "/etc/kafka.properties"))
    for s in specs:
        args = build_parser().parse_args(list(s.argv[3:]))
        assert (args.log_format, args.kafka_config) == ("json", "/etc/kafka.properties")


def test_workers_default_to_the_environment_then_the_number_of_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSOR_WORKERS", "3")
    assert build_parser().parse_args(["run", "m:app"]).workers == 3
    monkeypatch.delenv("PROCESSOR_WORKERS")
    monkeypatch.setattr("os.cpu_count", lambda: 5)
    assert build_parser().parse_args(["run", "m:app"]).workers == 5
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "m:app", "--workers", "0"])


def test_waiting_for_a_held_state_dir_ends_when_it_is_released_or_at_the_deadline(tmp_path: Path) -> None:
    lock = lock_state_dir(tmp_path)
    started = time.monotonic()
    wait_until_unlocked([tmp_path], 0.5)
    assert 0.5 <= time.monotonic() - started < 5
    threading.Timer(0.3, lock.close).start()
    started = time.monotonic()
    wait_until_unlocked([tmp_path], 30)
    assert time.monotonic() - started < 5
