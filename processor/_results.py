"""One long-lived reader of ``<app>.results`` per Client (docs/decisions/013).

Started on the Client's first wait, it assigns every partition of the results topic at its end (read
once, before any command of a wait is sent, so no result a wait expects can be missed) and polls
from a thread of its own; each result goes to the waits registered for its invocation id. A wait
registers before its command is produced, so the result is always behind the reader's position.
Results for nobody (other Clients', earlier ones) are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from processor._engine import kafka as kio
from processor._errors import ConfigurationError, ProcessorError

log = logging.getLogger("processor.client")
_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[bytes]"]


class Results:
    """The results reader of one Client: `start` it (blocking, idempotent), then `expect` ids."""

    def __init__(self, config: dict[str, Any], topic: str) -> None:
        self._config = config
        self.topic = topic
        self._lock = threading.Lock()
        self._waiters: dict[bytes, list[_Waiter]] = {}
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._failed: BaseException | None = None  # a refusal: every wait fails with it

    def start(self) -> None:
        """Assign every partition at its end and start polling (once; later calls return at once)."""
        with self._lock:
            if self._failed is not None:
                raise self._failed
            if self._thread is not None:
                return
            c = Consumer({**self._config, "group.id": f"client-{uuid.uuid4().hex}", "enable.auto.commit": False,
                          "isolation.level": "read_committed", "fetch.wait.max.ms": 20})
            try:
                c.assign(self._ends(c))
            except BaseException:
                c.close()
                raise
            self._consumer = c
            self._thread = threading.Thread(target=self._run, name=f"results-{self.topic}", daemon=True)
            self._thread.start()

    def _ends(self, c: Consumer) -> list[TopicPartition]:
        doing = f"reading {self.topic}"
        try:
            t = c.list_topics(self.topic, timeout=15).topics.get(self.topic)
        except KafkaException as e:
            _raise_refusal(e.args[0], doing)
            raise
        if t is not None and t.error is not None:
            _raise_refusal(t.error, doing)
        if t is None or t.error is not None or not t.partitions:
            raise ProcessorError(f"no results topic {self.topic!r}: is a processor of the app running (or did "
                                 "one ever run) on this cluster?")
        ends = []
        for p in sorted(t.partitions):
            try:
                _low, high = c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=15, cached=False)
            except KafkaException as e:
                _raise_refusal(e.args[0], doing)
                raise
            ends.append(TopicPartition(self.topic, p, int(high)))
        return ends

    def expect(self, invocation_id: str) -> asyncio.Future[bytes]:
        """A future of the next result record of `invocation_id` (its value); register it before the
        command that causes the result is produced. ``forget`` it if no longer awaited."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        with self._lock:
            if self._failed is not None:
                fut.set_exception(self._failed)
            else:
                self._waiters.setdefault(invocation_id.encode(), []).append((loop, fut))
        return fut

    def forget(self, invocation_id: str, fut: asyncio.Future[bytes]) -> None:
        with self._lock:
            ws = self._waiters.get(invocation_id.encode())
            if ws is not None:
                ws[:] = [w for w in ws if w[1] is not fut]
                if not ws:
                    del self._waiters[invocation_id.encode()]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            c, self._consumer = self._consumer, None
            waiters, self._waiters = self._waiters, {}
        if c is not None:
            c.close()
        for ws in waiters.values():
            for loop, fut in ws:
                _settle(loop, fut, lambda f: f.set_exception(ProcessorError("the Client was closed")))

    def _run(self) -> None:
        try:
            self._poll()
        except Exception as e:  # never leave a wait hanging until its timeout
            log.exception("the results reader of %s stopped", self.topic)
            self._fail(ProcessorError(f"the results reader of {self.topic} stopped: {type(e).__name__}: {e}"))

    def _poll(self) -> None:
        c = self._consumer
        assert c is not None
        while not self._stop.is_set():
            try:
                m = c.poll(0.2)
            except RuntimeError:  # closed under us
                return
            if m is None:
                continue
            err = m.error()
            if err is not None:
                if kio.is_refusal(err.code()):
                    self._fail(ConfigurationError(kio.not_authorized(err.str(), f"reading {self.topic}")))
                    return
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("reading %s: %s", self.topic, err.str())
                continue
            key = m.key()
            if key is None:
                continue
            with self._lock:
                ws = self._waiters.pop(key, None)
            value = m.value() or b""
            for loop, fut in ws or ():
                _settle(loop, fut, functools.partial(_set_result, value=value))

    def _fail(self, e: BaseException) -> None:
        with self._lock:
            self._failed = e
            waiters, self._waiters = self._waiters, {}
        for ws in waiters.values():
            for loop, fut in ws:
                _settle(loop, fut, lambda f: f.set_exception(e))


def _settle(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[bytes],
            how: Callable[[asyncio.Future[bytes]], None]) -> None:
    def apply() -> None:
        if not fut.done():
            how(fut)
    with contextlib.suppress(RuntimeError):  # the waiting loop is closed: nobody waits any more
        loop.call_soon_threadsafe(apply)


def _set_result(fut: asyncio.Future[bytes], value: bytes) -> None:
    fut.set_result(value)


def _raise_refusal(err: KafkaError | None, doing: str) -> None:
    if err is not None and kio.is_refusal(err.code()):
        raise ConfigurationError(kio.not_authorized(err.str(), doing))
