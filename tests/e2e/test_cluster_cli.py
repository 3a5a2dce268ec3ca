"""The cluster-wide CLI against three live `processor run --admin-port 0` instances on the real
broker: it finds an invocation stuck in a retry loop on whichever instance owns it, reads its
journal and error and its key's state, kills it with the token, and after that instance stops and
its partitions move, `processor invocations` shows every row once, from the partition's new owner.
`processor journal --export` takes the stuck invocation's journal from its live owner, and the
testing kit's replayer replays it against the app."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor._engine.routing import partition_for_key
from processor._journal_export import read_lines
from processor.testing import replay
from tests.e2e.conftest import Spawner
from tests.e2e.harness import ProcessorProcess
from tests.kafka_support import REPO, Kafka, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "e2e-cli-token"
PARTITIONS = 3
STUCK_KEY = "k-stuck"


class Cli:
    """`python -m processor ...` for one app, as an operator runs it (no token unless given)."""

    def __init__(self, kafka: Kafka, app: str) -> None:
        self.kafka = kafka
        self.app = app

    def run(self, *args: str, token: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
        if token:
            env["PROCESSOR_ADMIN_TOKEN"] = token
        cmd = [sys.executable, "-m", "processor", *args, "--app", self.app, "--bootstrap-servers",
               self.kafka.bootstrap]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)

    def json_lines(self, *args: str) -> tuple[int, list[dict[str, Any]], str]:
        r = self.run(*args, "--json")
        assert "Traceback" not in r.stderr, r.stderr
        return r.returncode, [orjson.loads(ln) for ln in r.stdout.splitlines() if ln.strip()], r.stderr


def _start(kafka: Kafka, spawn: Spawner) -> tuple[str, str, str, list[ProcessorProcess]]:
    name = kafka.unique("cli")
    inp = kafka.create_topic(f"{name}-in", PARTITIONS)
    out = kafka.create_topic(f"{name}-out", PARTITIONS)
    env = {"STUCK_APP": name, "STUCK_INPUT": inp, "STUCK_OUTPUT": out, "PROCESSOR_ADMIN_TOKEN": TOKEN}
    procs = [spawn("tests.apps.stuck:app", env, instance_id=f"i{n}", state_dir=spawn.tmp / f"state-{n}",
                   args=["--admin-port", "0"]) for n in (1, 2, 3)]
    for p in procs:
        p.start()
    return name, inp, out, procs


def test_the_cli_finds_reads_and_kills_a_stuck_invocation_and_shows_no_stale_rows_after_a_move(
        kafka: Kafka, spawn: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, inp, out, procs = _start(kafka, spawn)
    cli = Cli(kafka, name)

    # -- three live instances, every partition covered
    def all_live() -> bool:
        code, rows, _ = cli.json_lines("instances")
        live = [r for r in rows if r["live"] and r.get("admin_url")]
        return code == 0 and len(live) == 3 and sorted(p for r in live for p in r["partitions"]) == [0, 1, 2]
    wait_until(all_live, 120, "three live instances covering partitions 0..2", interval=0.5)

    kafka.produce(inp, [(f"k{i}".encode(), orjson.dumps({"id": f"e{i}"})) for i in range(9)])
    kafka.produce(inp, [(STUCK_KEY.encode(), orjson.dumps({"id": "e-stuck", "stuck": True}))])
    wait_until(lambda: len(kafka.drain(out)) == 9, 60, "nine outputs")
    stuck_partition = partition_for_key(STUCK_KEY.encode(), PARTITIONS)

    # -- find it: running, on the instance that owns its key's partition
    found: list[dict[str, Any]] = []

    def stuck_row() -> bool:
        code, rows, _ = cli.json_lines("invocations", "--status", "running", "--handler", "acct/handle")
        found[:] = [r for r in rows if r["key"] == STUCK_KEY]
        return code == 0 and bool(found)
    wait_until(stuck_row, 60, "the stuck invocation in `processor invocations`", interval=0.5)
    row = found[0]
    assert row["partition"] == stuck_partition
    owner = row["instance"]
    code, instances, _ = cli.json_lines("instances")
    assert stuck_partition in next(r for r in instances if r["instance_id"] == owner)["partitions"]

    # -- its journal and error: a step retrying, its last attempt's ConnectionError
    def retried_twice() -> bool:
        r = cli.run("journal", row["id"], "--json")
        return r.returncode == 0 and orjson.loads(r.stdout)["journal"][-1]["attempts"] >= 2
    wait_until(retried_twice, 60, "the step to be retried", interval=0.5)
    text = cli.run("journal", row["id"])
    assert text.returncode == 0, text.stderr
    assert f"invocation  {row['id']}" in text.stdout
    assert "status      running" in text.stdout and f"on instance {owner}" in text.stdout
    assert "error       ConnectionError: payment service unreachable for e-stuck (step #" in text.stdout
    assert "retrying" in text.stdout and '{"id":"e-stuck","stuck":true}' in text.stdout
    journal = orjson.loads(cli.run("journal", row["id"], "--json").stdout)
    assert [(e["kind"], e["name"]) for e in journal["journal"]][-1] == ("run", "charge")
    assert journal["journal"][-1]["failure"]["type"] == "ConnectionError"

    # -- its journal exported byte for byte from the live owner, and replayed by the kit against the app
    exported = tmp_path / "inflight.jsonl"
    r = cli.run("journal", "--export", str(exported))
    assert r.returncode == 0 and "exported 1 journal(s)" in r.stderr, r.stderr
    [line] = exported.read_bytes().splitlines()
    [recorded] = read_lines([line])
    assert (recorded.row.id, recorded.partition) == (row["id"], stuck_partition)
    assert [(e.kind, e.name) for e in recorded.entries][-1] == ("run", "charge")
    monkeypatch.setenv("STUCK_APP", name)
    monkeypatch.setenv("STUCK_INPUT", inp)
    monkeypatch.setenv("STUCK_OUTPUT", out)
    stuck = importlib.import_module("tests.apps.stuck")
    assert replay(stuck.app, exported).ok

    # -- its key's state
    state = cli.run("state", "acct", STUCK_KEY, "--json")
    assert state.returncode == 0, state.stderr
    assert orjson.loads(state.stdout) == {"object": "acct", "key": STUCK_KEY, "partition": stuck_partition,
                                               "state": {"n": 1, "last": "e-stuck"}, "instance": owner}
    assert re.search(r"^\s+n\s+1$", cli.run("state", "acct", STUCK_KEY).stdout, re.M)

    # -- kill: refused without the token (nothing sent), done with it
    refused = cli.run("kill", row["id"])
    assert refused.returncode == 2 and "needs the instances' admin token" in refused.stderr
    wrong = cli.run("kill", row["id"], token="wrong")
    assert wrong.returncode == 2 and "refused the token" in wrong.stderr
    killed = cli.run("kill", row["id"], token=TOKEN)
    assert killed.returncode == 0, killed.stderr
    assert f"instance {owner} checked it" in killed.stdout

    def failed() -> bool:
        code, rows, _ = cli.json_lines("invocations", "--key", STUCK_KEY)
        return code == 0 and [(r["status"], r["failure"]) for r in rows] == [
            ("failed", "Killed: the invocation was killed")]
    wait_until(failed, 60, "the killed invocation to show failed", interval=0.5)
    again = cli.run("kill", row["id"], token=TOKEN)
    assert again.returncode == 1 and "already failed" in again.stderr

    # -- the owner stops; its partition moves; every row shows once, from the new owner
    before = {r["id"]: r for r in cli.json_lines("invocations")[1]}
    assert len(before) == 10
    stopped = next(p for p in procs if p.instance_id == owner)
    assert stopped.stop() == 0

    def moved() -> bool:
        code, rows, _ = cli.json_lines("invocations")
        by_id = {r["id"]: r for r in rows}
        return (code == 0 and len(rows) == len(by_id) == 10
                and by_id[row["id"]]["instance"] != owner and by_id[row["id"]]["status"] == "failed")
    wait_until(moved, 90, "the stopped instance's partitions to be served by the others", interval=1.0)
    code, rows, _ = cli.json_lines("invocations")
    assert code == 0
    owners = {r["instance_id"]: set(r["partitions"]) for r in cli.json_lines("instances")[1] if r["live"]}
    assert owner not in owners
    for r in rows:
        assert r["partition"] in owners[r["instance"]], r
        assert (r["status"], r["key"]) == (before[r["id"]]["status"], before[r["id"]]["key"])

    for p in procs:
        if p is not stopped:
            assert p.stop() == 0


def test_a_wrong_app_exits_2_naming_the_apps_found(kafka: Kafka) -> None:
    r = Cli(kafka, kafka.unique("nosuch")).run("invocations")
    assert r.returncode == 2, r.stderr
    assert "no app 'nosuch-" in r.stderr and ".inbox does not exist" in r.stderr and "apps found:" in r.stderr
    assert "Traceback" not in r.stderr
