"""Durable futures and the combinators over them.

Every durable action of a context returns a ``DurableFuture``: awaiting it yields the journaled
outcome. ``gather`` and ``select`` combine them into durable futures (which combine again),
deterministically: ``gather`` reports results (and the first error) in argument order whatever
finished first; ``select`` journals which future won, so a replay picks the same winner even when,
replaying, all of them are already done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from processor._context import _Driver

T = TypeVar("T")


class DurableFuture(Generic[T]):
    """The outcome of a journaled action, released once it is durable. Created by contexts only."""

    __slots__ = ("_driver", "_future", "seq")

    def __init__(self, future: asyncio.Future[T], driver: _Driver | None, seq: int) -> None:
        self._future = future
        self._driver = driver
        self.seq = seq

    def __await__(self) -> Generator[Any, None, T]:
        return self._future.__await__()

    def done(self) -> bool:
        """Whether the outcome is already available to the handler."""
        return self._future.done()

    def with_timeout(self, timeout: timedelta) -> DurableFuture[T]:
        """This future, or ``TimeoutError`` if a durable timer of `timeout` fires first (the timer and
        the race's winner are journaled: a replay takes the same branch)."""
        if self._driver is None:  # an empty gather(): done already, it cannot time out
            return self
        return self._driver.with_timeout(self, timeout)


def gather(*futures: DurableFuture[Any]) -> DurableFuture[list[Any]]:
    """A durable future of every future's result, in argument order. If any failed, the first failure
    in argument order is raised (not the first in time), once all of them are done, so a replay raises
    the same one. It journals nothing of its own (its outcome follows from theirs) and composes:
    ``p.select(all=p.gather(a, b), timer=ctx.sleep(d))``, ``p.gather(a, b).with_timeout(d)``."""
    for f in futures:
        if not isinstance(f, DurableFuture):
            raise TypeError(f"gather() takes the durable futures of context actions, got {type(f).__name__}")
    if not futures:
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        done.set_result([])
        return DurableFuture(done, None, -1)  # complete: needs no driver
    out: asyncio.Future[list[Any]] = futures[0]._future.get_loop().create_future()
    left = len(futures)

    def one_done(f: asyncio.Future[Any]) -> None:
        nonlocal left
        left -= 1
        if not f.cancelled():
            f.exception()  # retrieved: an error asyncio would otherwise log if the rest never come
        if left or out.done():
            return
        if any(f._future.cancelled() for f in futures):
            out.cancel()
            return
        errors = [e for f in futures if (e := f._future.exception()) is not None]  # retrieves every error
        if errors:
            out.set_exception(errors[0])
        else:
            out.set_result([f._future.result() for f in futures])

    for f in futures:
        f._future.add_done_callback(one_done)
    return DurableFuture(out, futures[0]._driver, -1)


def select(**futures: DurableFuture[Any]) -> DurableFuture[tuple[str, Any]]:
    """The first of `futures` to complete, as ``(name, result)`` (its error is raised if it failed).
    The winner is journaled, so a replay returns the same branch whatever completes first then."""
    if not futures:
        raise ValueError("select() needs at least one future")
    driver = next((f._driver for f in futures.values() if f._driver is not None), None)
    if driver is None:
        raise ValueError("select() needs a future of a context action (an empty gather() is done already)")
    return driver.select(futures)
