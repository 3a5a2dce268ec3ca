"""Eager start: run a coroutine right where it is started, up to its first suspension, and give it
an asyncio task only then (docs/decisions/008-eager-handlers-and-the-drain.md). A handler that never
waits costs no task at all; until it has one, a stand-in is asyncio's current task.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any


class _Started(collections.abc.Coroutine[Any, Any, Any]):
    """The rest of a coroutine that already ran up to its first suspension, as a coroutine a task
    can drive: its first ``send`` hands the task what the coroutine yielded then (a future, with
    its blocking flag already set); after that, and for anything thrown in (a cancellation, even
    one before the task ever ran it), it is the coroutine itself."""

    __slots__ = ("_coro", "_first", "_started")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro, self._first, self._started = coro, first, False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            first, self._first = self._first, None
            return first
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._started = True
        self._first = None
        return self._coro.throw(typ if val is None else val)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        raise TypeError("driven by its task only")


class _TaskToBe:
    """What ``asyncio.current_task()`` returns while an eagerly started coroutine runs before it has
    a task: ``asyncio.timeout``, ``TaskGroup`` and the like capture it and later cancel, count or
    uncancel it — all of which it passes on to the task the coroutine gets when it first suspends
    (or keeps until then). Without it they would capture the engine's poll task."""

    __slots__ = ("_cancels", "_msg", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self._cancels = 0
        self._msg: Any = None

    def became(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        for _ in range(self._cancels):
            task.cancel(self._msg)

    def cancel(self, msg: Any = None) -> bool:
        if self.task is not None:
            return self.task.cancel(msg)
        self._cancels += 1
        self._msg = msg
        return True

    def cancelling(self) -> int:
        return self.task.cancelling() if self.task is not None else self._cancels

    def uncancel(self) -> int:
        if self.task is not None:
            return self.task.uncancel()
        self._cancels = max(0, self._cancels - 1)
        return self._cancels

    def done(self) -> bool:
        return self.task.done() if self.task is not None else False

    def __getattr__(self, name: str) -> Any:
        if self.task is None:
            raise AttributeError(f"{name}: this coroutine has no task yet")
        return getattr(self.task, name)


def eager_task(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any] | None:
    """Run `coro` right here up to its first suspension; None if it finished, else the task that
    drives the rest. Meanwhile it is the current task's stand-in (``_TaskToBe``), and it runs in a
    context of its own, the one its task goes on in (a context variable it set before suspending
    is reset in the same context after)."""
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    outer = asyncio.current_task(loop)
    me = _TaskToBe()
    stand_in: Any = me  # asyncio's bookkeeping takes any object as the current task
    if outer is not None:
        asyncio.tasks._leave_task(loop, outer)
    asyncio.tasks._enter_task(loop, stand_in)
    try:
        first = ctx.run(coro.send, None)
    except StopIteration:
        return None
    finally:
        asyncio.tasks._leave_task(loop, stand_in)
        if outer is not None:
            asyncio.tasks._enter_task(loop, outer)
    task = loop.create_task(_Started(coro, first), name=name, context=ctx)
    me.became(task)
    return task
