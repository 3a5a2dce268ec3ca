"""Blocking calls with a deadline the engine enforces itself.

librdkafka can block past the timeout it is given (``send_offsets_to_transaction`` while the group
coordinator is away: librdkafka #5456, #5511). Every such call runs on a :class:`Lane`, a daemon
thread the engine can walk away from: when a call outlives its deadline the lane is *abandoned*
(never used again, its thread left blocked; being a daemon it never holds up process exit) and the
caller gets :class:`Stuck`. Whoever owned the client on that lane replaces the client too.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("processor.engine")


class Stuck(Exception):
    """A blocking call did not return within its deadline; its lane is abandoned."""


class Deadline:
    """One point in (monotonic) time shared by every step of a multi-step operation."""

    __slots__ = ("at",)

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left, never below zero."""
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at


class Lane:
    """A daemon thread running one call at a time, in submission order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.abandoned = False
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            fn, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        if self.abandoned:
            raise Stuck(f"lane {self.name} was abandoned")
        fut: Future[T] = Future()
        self._calls.put((fn, fut))
        return fut

    async def call(self, fn: Callable[[], T], timeout: float, what: str) -> T:
        """Run `fn` on this lane; :class:`Stuck` (and the lane abandoned) if it takes longer than
        `timeout` seconds, counting any wait behind earlier calls."""
        fut = asyncio.wrap_future(self.submit(fn))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            self.abandon()
            fut.add_done_callback(_retrieve)  # it may still end, often in an error once its client is fenced
            raise Stuck(f"{what} did not return within {timeout:.1f}s") from None

    def call_sync(self, fn: Callable[[], T], timeout: float, what: str) -> T:
        """:meth:`call` for threads that are not the event loop."""
        fut = self.submit(fn)
        try:
            return fut.result(timeout)
        except TimeoutError:
            self.abandon()
            raise Stuck(f"{what} did not return within {timeout:.1f}s") from None

    def abandon(self) -> None:
        if not self.abandoned:
            self.abandoned = True
            log.warning("abandoning thread %s: a call on it is stuck", self.name)
        self._calls.put(None)  # lets the thread end if the stuck call ever returns

    def close(self) -> None:
        """End the thread once the calls already submitted are done."""
        self._calls.put(None)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Take an abandoned call's outcome, so asyncio does not log it as an error never retrieved."""
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("an abandoned call ended with %r", fut.exception())
