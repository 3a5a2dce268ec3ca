"""Durable futures and the combinators over them.

Every durable action of a context returns a ``DurableFuture``: awaiting it yields the journaled
outcome. ``gather`` and ``select`` combine them deterministically: ``gather`` reports results (and the
first error) in argument order whatever finished first; ``select`` journals which future won, so a
replay picks the same winner even when, replaying, all of them are already done.
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

    def __init__(self, future: asyncio.Future[T], driver: _Driver, seq: int) -> None:
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
        return self._driver.with_timeout(self, timeout)


async def gather(*futures: DurableFuture[Any]) -> list[Any]:
    """Wait for every future; results in argument order. If any failed, the first failure in argument
    order is raised (not the first in time), so a replay raises the same one."""
    results: list[Any] = []
    errors: list[BaseException] = []
    for f in futures:
        try:
            results.append(await f)
        except Exception as e:
            errors.append(e)
            results.append(None)
    if errors:
        raise errors[0]
    return results


def select(**futures: DurableFuture[Any]) -> DurableFuture[tuple[str, Any]]:
    """The first of `futures` to complete, as ``(name, result)`` (its error is raised if it failed).
    The winner is journaled, so a replay returns the same branch whatever completes first then."""
    if not futures:
        raise ValueError("select() needs at least one future")
    first = next(iter(futures.values()))
    return first._driver.select(futures)
