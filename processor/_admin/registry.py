"""The instance registry: every engine with an admin endpoint says where it is on ``<app>.instances``.

One compacted topic of one partition, keyed by instance id; the value is an :class:`InstanceRecord`
(JSON): the admin endpoint's URL, the partitions the instance owns and has active, when it started
and when it last published. An instance publishes every ``INTERVAL_S`` and within half a second of an
assignment change, from a thread of its own (never the event loop), and a tombstone when it stops
cleanly. ``processor invocations`` and the other cluster-wide commands read it and believe a record
only while its instance is a member of the app's consumer group (``processor/_cluster/``), so the
record a SIGKILLed instance left behind is ignored. See docs/decisions/009-instance-registry.md.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import orjson
from confluent_kafka import KafkaException, Producer

from processor._engine import kafka as kio
from processor._engine.kafka import registry_topic

if TYPE_CHECKING:
    from processor._admin.server import AdminServer

log = logging.getLogger("processor.admin")

INTERVAL_S = 5.0       # a heartbeat this often; the CLI calls a record older than 3 of them stale
CHECK_S = 0.5          # how often the thread looks for an assignment change
ADVERTISE_ENV = "PROCESSOR_ADMIN_ADVERTISE_HOST"  # the host others reach the endpoint at
VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceRecord:
    """What one instance publishes about itself. `partitions`: active (their stores restored and
    served by the admin API); `owned`: assigned by the group, some maybe still restoring."""

    app: str
    instance_id: str
    admin_url: str
    host: str
    pid: int
    started_ms: int
    heartbeat_ms: int
    partitions: tuple[int, ...] = ()
    owned: tuple[int, ...] = ()
    ready: bool = False
    interval_s: float = INTERVAL_S
    token_required_for_reads: bool = False
    version: int = VERSION

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @staticmethod
    def decode(data: bytes) -> InstanceRecord:
        """From a registry value; ValueError when it is not one. Fields a newer build added are ignored."""
        try:
            d = orjson.loads(data)
            return InstanceRecord(
                **{k: v for k, v in d.items() if k in _FIELDS and k not in ("partitions", "owned")},
                partitions=tuple(int(p) for p in d.get("partitions", ())),
                owned=tuple(int(p) for p in d.get("owned", ())))
        except (orjson.JSONDecodeError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"not an instance record: {e}") from None


_FIELDS = frozenset(f.name for f in fields(InstanceRecord))


def advertised_host(bind_host: str) -> str:
    """The host in the URL others use: $PROCESSOR_ADMIN_ADVERTISE_HOST, else the bound address, else
    (bound to every address) this machine's name."""
    explicit = os.environ.get(ADVERTISE_ENV)
    if explicit:
        return explicit
    if bind_host in ("", "0.0.0.0", "::"):
        return socket.getfqdn()
    return bind_host


def admin_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class RegistryPublisher:
    """Publishes this instance's record from a daemon thread until ``close``."""

    def __init__(self, server: AdminServer) -> None:
        self._server = server
        engine = server.engine
        self._topic = registry_topic(engine.app.name)
        self._stop = threading.Event()
        self._started_ms = int(time.time() * 1000)
        self._url = admin_url(advertised_host(server.config.host), server.port)
        self._producer: Producer | None = None
        self._published = False
        self._thread = threading.Thread(target=self._run, name="admin-registry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(self) -> InstanceRecord | None:
        """This instance as it is now (read from the engine without its event loop: copies of a
        dict's keys and a set, which the GIL makes atomic), or None before its topics exist."""
        engine = self._server.engine
        if not engine.partitions_total:
            return None
        for _ in range(3):
            try:
                active, owned = tuple(sorted(engine.workers)), tuple(sorted(engine._owned))
                break
            except RuntimeError:  # changed size while copied: read again
                continue
        else:
            return None
        return InstanceRecord(
            app=engine.app.name, instance_id=engine.instance_id, admin_url=self._url,
            host=socket.gethostname(), pid=os.getpid(), started_ms=self._started_ms,
            heartbeat_ms=int(time.time() * 1000), partitions=active, owned=owned,
            ready=engine.ready.is_set(), token_required_for_reads=not self._server.config.loopback)

    def _run(self) -> None:
        last: tuple[tuple[int, ...], tuple[int, ...], bool] | None = None
        due = 0.0
        while not self._stop.wait(CHECK_S):
            try:
                rec = self.record()
                if rec is None:
                    continue
                shape = (rec.partitions, rec.owned, rec.ready)
                if shape != last or time.monotonic() >= due:
                    self._produce(rec.encode())
                    last, due = shape, time.monotonic() + INTERVAL_S
                if self._producer is not None:
                    self._producer.poll(0)
            except (KafkaException, BufferError) as e:  # the next beat tries again
                log.debug("instance registry: %s", e)
            except Exception:  # never let a bug here take the endpoint or the engine down
                log.exception("instance registry publisher")
                due = time.monotonic() + INTERVAL_S

    def _produce(self, value: bytes | None) -> None:
        if self._producer is None:
            engine = self._server.engine
            self._producer = Producer({**kio.base_config(engine._client, engine._producer_extra),
                                       "enable.idempotence": True, "acks": "all", "linger.ms": 0})
        self._producer.produce(self._topic, key=self._server.engine.instance_id.encode(), value=value,
                               partition=0, on_delivery=self._delivered)
        self._published = True

    @staticmethod
    def _delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            log.debug("instance registry record not delivered: %s", err)

    def close(self, timeout: float = 2.0) -> None:
        """Stop publishing and take the record back (a tombstone): a stopped instance is not asked.
        Bounded by `timeout`: with Kafka away the record stays, and the group's membership says it
        is gone once the session times out."""
        self._stop.set()
        self._thread.join(timeout)
        if self._published and self._producer is not None:
            try:
                self._produce(None)
            except (KafkaException, BufferError) as e:
                log.debug("instance registry tombstone: %s", e)
            self._producer.flush(timeout)
