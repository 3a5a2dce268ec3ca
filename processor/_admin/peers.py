"""The app's other instances, for the web UI this endpoint serves: ``/api/instances`` lists the live
ones (the registry ``<app>.instances`` judged against the consumer group, by the cluster-wide CLI's
discovery, ``processor/_cluster/discovery.py``), each with a path on this endpoint that forwards to
it, ``/api/instances/<instance id>/api/...``: the browser talks to this one origin only.

Never an open proxy: a request is forwarded only to the admin URL a live instance registered, only
to the API it serves (GET reads, POST actions; not ``/api/instances``, so never a chain of hops),
with the caller's ``Authorization`` header and nothing else, within a timeout: ``502`` when the
instance does not answer, ``504`` when it answers too late. The answer is passed back as JSON.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import orjson
from confluent_kafka import KafkaException

from processor._admin.registry import InstanceRecord
from processor._cluster import discovery
from processor._cluster.discovery import CliError, Cluster

if TYPE_CHECKING:
    from processor._engine.engine import Engine

READER_GROUP = "registry-"   # the registry reader's throwaway group ids (docs/security.md, rule 6)
LIST_TTL_S = 3.0             # a listing is reused this long: the page asks on every refresh
DISCOVER_TIMEOUT_S = 5.0
READS = frozenset({"invocations", "state", "timers", "cycle", "partitions"})  # what a GET may reach
MAX_BODY = 64 << 20

Discover = Callable[[], Cluster]


class Unknown(Exception):
    """404: not a path this endpoint forwards, or no live instance by that id."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Listing:
    """What discovery said at `at` (monotonic): the cluster, or why it could not say."""

    cluster: Cluster | None
    error: str | None
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Forwarded:
    """An instance's answer to a forwarded request (or the 502/504 saying it gave none)."""

    status: int
    body: bytes
    headers: dict[str, str]


def instance_path(instance_id: str) -> str:
    """The prefix on this endpoint that reaches `instance_id`'s API."""
    return "/api/instances/" + quote(instance_id, safe="")


class Peers:
    """The live instances as discovery last saw them (reused for ``LIST_TTL_S``), and forwarding.
    `discover`: a seam for tests; by default Kafka is asked with the engine's client settings."""

    def __init__(self, engine: Engine, discover: Discover | None = None, ttl_s: float = LIST_TTL_S) -> None:
        self._engine = engine
        self._discover = discover or self._from_kafka
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._listing: Listing | None = None

    def _from_kafka(self) -> Cluster:
        e = self._engine
        return discovery.discover(e.bootstrap, e.kafka_config, e.app.name, timeout=DISCOVER_TIMEOUT_S,
                                  reader_group=READER_GROUP)

    def listing(self, max_age_s: float | None = None) -> Listing:
        """Discovery's answer at most `max_age_s` old (default ``LIST_TTL_S``); one caller asks, the
        others wait for its answer."""
        max_age = self._ttl_s if max_age_s is None else max_age_s
        with self._lock:
            cur = self._listing
            if cur is not None and time.monotonic() - cur.at <= max_age:
                return cur
            cluster, error = None, None
            try:
                cluster = self._discover()
            except CliError as e:
                error = str(e)
            except KafkaException as e:
                error = e.args[0].str() if e.args else str(e)
            self._listing = Listing(cluster=cluster, error=error, at=time.monotonic())
            return self._listing

    def instances(self) -> dict[str, Any]:
        """The body of ``GET /api/instances``."""
        return instances_body(self._engine.app.name, self._engine.instance_id, self.listing())

    def live(self, instance_id: str) -> InstanceRecord | None:
        """The registry record of live instance `instance_id`; one not listed is looked up again
        unless the listing is under a second old (it may have just started)."""
        for max_age in (self._ttl_s, 1.0):
            c = self.listing(max_age).cluster
            found = next((r for r in (c.live if c else ()) if r.instance_id == instance_id), None)
            if found is not None:
                return found
        return None


def instances_body(app: str, self_id: str, listing: Listing) -> dict[str, Any]:
    """This instance first (path ``""``), then the other live ones by id, each with the partitions
    it serves (``partitions``) and those the group assigned it (``assigned``, None when the group is
    unknown); ``owners`` maps each assigned partition to its instance, what a merged view believes."""
    me: dict[str, Any] = {"instance_id": self_id, "app": app, "self": True, "path": ""}
    c = listing.cluster
    if c is None:
        return {"app": app, "self": self_id, "source": "self", "partitions_total": None, "owners": None,
                "notes": [f"only this instance is listed: {listing.error}"], "instances": [me]}
    owners = c.owners()
    assigned = {m.instance_id: list(m.partitions) for m in c.members}
    rows = []
    for r in c.live:
        mine = r.instance_id == self_id
        rows.append({"instance_id": r.instance_id, "app": r.app, "self": mine,
                     "path": "" if mine else instance_path(r.instance_id), "admin_url": r.admin_url,
                     "partitions": list(r.partitions), "ready": r.ready,
                     "assigned": None if owners is None else assigned.get(r.instance_id, [])})
    if not any(r["self"] for r in rows):  # not registered yet (or not believed): this one still answers
        rows.append({**me, "admin_url": None, "partitions": None, "ready": None,
                     "assigned": None if owners is None else assigned.get(self_id, [])})
    rows.sort(key=lambda r: (not r["self"], r["instance_id"]))
    notes = [f"instance {j.record.instance_id} is not asked: {j.why}" for j in c.judged if not j.live]
    if owners is None:
        notes.append("the consumer group could not be described: instances judged live by their heartbeats")
    return {"app": app, "self": self_id, "source": "registry", "partitions_total": c.partitions_total,
            "owners": None if owners is None else {str(p): i for p, i in sorted(owners.items())},
            "notes": notes, "instances": rows}


def forward_path(method: str, raw_parts: Sequence[str], query: str, actions: Collection[str]) -> str:
    """The path (and query) to ask the instance for, from the parts after ``/api/instances/<id>``;
    Unknown unless it is one of the API's reads (GET) or actions (POST)."""
    parts = [unquote(p) for p in raw_parts]
    if any(p in ("", ".", "..") for p in parts) or not parts or parts[0] != "api":
        raise Unknown(f"not forwarded: /{'/'.join(raw_parts)} (only the instance's /api/ reads and actions)")
    if method == "GET":
        ok = len(parts) >= 2 and parts[1] in READS
    else:
        ok = len(parts) == 4 and parts[1] == "invocations" and parts[3] in actions
    if not ok:
        raise Unknown(f"not forwarded: {method} /{'/'.join(raw_parts)} (only the instance's /api/ reads and actions)")
    path = "/" + "/".join(quote(p, safe="") for p in parts)
    return path + (f"?{query}" if query and method == "GET" else "")


def forward(record: InstanceRecord, method: str, path: str, authorization: str | None,
            timeout: float) -> Forwarded:
    """Ask `record`'s admin endpoint `method` `path` with the caller's `authorization`."""
    url = urlsplit(record.admin_url)
    who = f"instance {record.instance_id} ({record.admin_url})"
    if url.scheme != "http" or not url.hostname:
        return _failed(502, f"{who}: not an admin URL this endpoint forwards to")
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
    headers = {"Authorization": authorization} if authorization else {}
    if method == "POST":
        headers["Content-Length"] = "0"
    try:
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        body = r.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return _failed(502, f"{who} answered more than {MAX_BODY >> 20} MB")
        kept = {"WWW-Authenticate": r.getheader("WWW-Authenticate") or 'Bearer realm="processor"'} \
            if r.status == 401 else {}
        return Forwarded(status=r.status, body=body, headers=kept)
    except TimeoutError:
        return _failed(504, f"{who} did not answer within {timeout:g}s")
    except (OSError, http.client.HTTPException) as e:
        return _failed(502, f"{who} did not answer: {e}")
    finally:
        conn.close()


def _failed(status: int, message: str) -> Forwarded:
    return Forwarded(status=status, body=orjson.dumps({"error": message}) + b"\n", headers={})
