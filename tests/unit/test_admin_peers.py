"""The admin endpoint as the web UI's one origin, without a broker: ``/api/instances`` lists the live
instances discovery reports (a fake of it here), and ``/api/instances/<id>/api/...`` forwards reads
and actions to a live instance's admin URL with the caller's token, and nothing else: not to an
instance discovery does not list, not beyond the API's reads and actions, and with a 502/504 when the
instance does not answer. tests/e2e/test_web_ui_cluster.py runs it with three live instances."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

import processor as p
from processor._admin import peers
from processor._admin.registry import InstanceRecord
from processor._admin.server import ACTIONS, AdminConfig, AdminServer
from processor._cluster.discovery import CliError, Cluster, Member, judge
from processor._engine.commands import CommandKind
from processor._engine.engine import Engine
from tests.http_support import request

TOKEN = "peer-token"
INV = "inv-1-0123456789abcdef01234567"


class Two:
    """Two endpoints of app "peers-unit" on one test loop: i1 (serving the UI) and i2."""

    def __init__(self, servers: dict[str, AdminServer]) -> None:
        self.servers = servers
        self.listed = ["i1", "i2"]  # what the fake discovery reports live
        self.sent: list[tuple[str, int, str, CommandKind]] = []
        self.discoveries = 0
        self.extra: dict[str, str] = {}  # instance id -> the admin URL its record gives
        for iid, s in servers.items():
            s.send_command = self._recorder(iid)  # type: ignore[method-assign]
        servers["i1"].peers = peers.Peers(servers["i1"].engine, discover=self.discover, ttl_s=0.0)  # always asks

    def _recorder(self, iid: str) -> Callable[[int, str, CommandKind], None]:
        return lambda part, inv, kind: self.sent.append((iid, part, inv, kind))

    def record(self, iid: str, url: str | None = None) -> InstanceRecord:
        port = self.servers[iid].port if iid in self.servers else 1
        return InstanceRecord(app="peers-unit", instance_id=iid, admin_url=url or f"http://127.0.0.1:{port}",
                              host="h", pid=1, started_ms=0, heartbeat_ms=int(time.time() * 1000),
                              partitions=(0,) if iid == "i1" else (1,))

    def discover(self) -> Cluster:
        self.discoveries += 1
        records = [self.record(i, self.extra.get(i)) for i in self.listed]
        members = [Member(instance_id=i, client_id="c", host="h", partitions=(n,)) for n, i in enumerate(self.listed)]
        return Cluster(app="peers-unit", bootstrap="-", partitions_total=2, group_state="stable",
                       members=tuple(members), judged=tuple(judge(records, members, int(time.time() * 1000))))

    def request(self, path: str, *, method: str = "GET", token: str | None = None) -> tuple[int, bytes]:
        return request(f"http://127.0.0.1:{self.servers['i1'].port}{path}", method=method, token=token)


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Two]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    thread.start()
    app = p.App("peers-unit", partitions=2)

    async def build(iid: str) -> Engine:
        return Engine(app, bootstrap_servers="127.0.0.1:1", state_dir=tmp_path / iid, instance_id=iid)
    servers = {}
    for iid in ("i1", "i2"):
        engine = asyncio.run_coroutine_threadsafe(build(iid), loop).result(10)
        servers[iid] = AdminServer.start(engine, AdminConfig(port=0, token=TOKEN, loop_timeout_s=0.5,
                                                             forward_timeout_s=1.0), loop)
    try:
        yield Two(servers)
    finally:
        for s in servers.values():
            s.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_api_instances_lists_the_live_instances_with_a_path_that_forwards_to_each(two: Two) -> None:
    status, body = two.request("/api/instances")
    assert status == 200, body
    d = orjson.loads(body)
    assert (d["source"], d["self"], d["partitions_total"], d["owners"]) == ("registry", "i1", 2, {"0": "i1", "1": "i2"})
    assert [(i["instance_id"], i["self"], i["path"], i["assigned"]) for i in d["instances"]] == [
        ("i1", True, "", [0]), ("i2", False, "/api/instances/i2", [1])]
    status, body = two.request("/api/instances/i2/api/partitions")
    assert status == 200, body
    assert orjson.loads(body)["instance_id"] == "i2"
    status, body = two.request("/api/instances/i2/api/invocations?status=running&limit=5")
    assert status == 200 and orjson.loads(body)["invocations"] == []
    assert two.request("/api/instances/i2/api/invocations?limit=0")[0] == 400  # the instance's own answer


def test_the_listing_is_reused_for_a_while_and_without_kafka_it_is_this_instance_alone(two: Two) -> None:
    two.servers["i1"].peers = peers.Peers(two.servers["i1"].engine, discover=two.discover, ttl_s=60)
    for _ in range(3):
        assert two.request("/api/instances")[0] == 200
    assert two.discoveries == 1

    def down() -> Cluster:
        raise CliError("no app 'peers-unit' on Kafka at -", 2)
    two.servers["i1"].peers = peers.Peers(two.servers["i1"].engine, discover=down)
    d = orjson.loads(two.request("/api/instances")[1])
    assert (d["source"], [i["instance_id"] for i in d["instances"]]) == ("self", ["i1"])
    assert "no app 'peers-unit'" in d["notes"][0]
    assert two.request("/api/instances/i2/api/partitions")[0] == 404


def test_only_live_instances_and_only_the_apis_reads_and_actions_are_forwarded(two: Two) -> None:
    for path in ("/api/instances/i9/api/partitions", "/api/instances/i2/metrics", "/api/instances/i2/healthz",
                 "/api/instances/i2/api/instances", "/api/instances/i2/api/instances/i1/api/partitions",
                 "/api/instances/i2/api/%2E%2E/metrics", "/api/instances/i2//api/partitions",
                 "/api/instances/i2/ui/", "/api/instances/i2"):
        status, body = two.request(path)
        assert status == 404, (path, body)
    two.listed = ["i1"]  # i2 left the group: no longer forwarded to
    status, body = two.request("/api/instances/i2/api/partitions")
    assert status == 404 and b"no live instance 'i2'" in body
    assert peers.forward_path("GET", ["api", "state", "acct", "a%2Fb"], "x=1", ACTIONS) == "/api/state/acct/a%2Fb?x=1"
    assert peers.forward_path("POST", ["api", "invocations", INV, "kill"], "x=1", ACTIONS) == \
        f"/api/invocations/{INV}/kill"
    for method, parts in (("POST", ["api", "invocations", INV]), ("POST", ["api", "invocations", INV, "drop"]),
                          ("POST", ["api", "partitions"]), ("GET", ["api"]), ("GET", ["metrics"])):
        with pytest.raises(peers.Unknown):
            peers.forward_path(method, parts, "", ACTIONS)


def test_the_callers_token_is_passed_through_and_actions_need_it_here_and_there(two: Two) -> None:
    two.servers["i2"].config = replace(two.servers["i2"].config, host="10.1.2.3")  # i2 as if beyond loopback
    assert two.request("/api/instances/i2/api/partitions")[0] == 401
    assert two.request("/api/instances/i2/api/partitions", token=TOKEN)[0] == 200
    for token in (None, "wrong"):
        status, body = two.request(f"/api/instances/i2/api/invocations/{INV}/kill", method="POST", token=token)
        assert status == 401, body
    assert two.sent == []
    status, body = two.request(f"/api/instances/i2/api/invocations/{INV}/kill", method="POST", token=TOKEN)
    assert status == 202, body
    assert orjson.loads(body) == {"invocation_id": INV, "action": "kill", "partition": 1, "owned": False}
    assert two.sent == [("i2", 1, INV, CommandKind.KILL)]


def test_an_instance_that_does_not_answer_is_a_502_and_one_too_slow_a_504(two: Two) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    silent = socket.socket()  # accepts (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        two.listed = ["i1", "gone", "mute"]
        two.extra = {"gone": f"http://127.0.0.1:{closed.getsockname()[1]}",
                     "mute": f"http://127.0.0.1:{silent.getsockname()[1]}"}
        status, body = two.request("/api/instances/gone/api/partitions")
        assert status == 502 and b"instance gone" in body and b"did not answer" in body, body
        t0 = time.monotonic()
        status, body = two.request("/api/instances/mute/api/partitions")
        assert status == 504 and b"did not answer within 1s" in body, body
        assert time.monotonic() - t0 < 5
    finally:
        closed.close()
        silent.close()
