"""Handler contexts, scoped by capability: ``Context`` (any handler) → ``ObjectSharedContext``
(+ read-only state of the key) → ``ObjectContext`` (+ state writes). The engine creates them;
they have no public constructor."""

from __future__ import annotations

import contextvars
import random
import uuid
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from processor._app import HandlerRef, Target
from processor._errors import ConfigurationError, TerminalError
from processor._futures import DurableFuture
from processor._retry import RetryPolicy
from processor._schedule import DEFAULT_GRACE, ENSURE, REMOVE, CatchUp, ScheduleDef

if TYPE_CHECKING:
    from processor._app import HandlerDef

T = TypeVar("T")
In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True, slots=True, kw_only=True)
class StepInfo:
    """The step whose body is running: read it with ``current_step()`` inside a ``ctx.run`` body.
    ``idempotency_key`` is stable across attempts, crashes and replays: pass it to external APIs so
    they can dedupe a body that runs more than once (bodies are at-least-once)."""

    invocation_id: str
    seq: int
    name: str
    attempt: int

    @property
    def idempotency_key(self) -> str:
        return f"{self.invocation_id}:{self.seq}"


# (invocation id, seq, name, attempt) of the running body: a StepInfo is built only when asked for
_CURRENT_STEP: contextvars.ContextVar[tuple[str, int, str, int] | None] = contextvars.ContextVar("step", default=None)


def current_step() -> StepInfo:
    """The running ``ctx.run`` step; raises RuntimeError outside a step body."""
    info = _CURRENT_STEP.get()
    if info is None:
        raise RuntimeError("current_step() is only available inside a ctx.run body")
    invocation_id, seq, name, attempt = info
    return StepInfo(invocation_id=invocation_id, seq=seq, name=name, attempt=attempt)


class _Driver(Protocol):
    """What a context needs from the engine's invocation runtime."""

    invocation_id: str
    key: str | None

    def run(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
            retry: RetryPolicy | None) -> DurableFuture[Any]: ...
    def sleep(self, duration: timedelta) -> DurableFuture[None]: ...
    def call(self, target: Target, arg: Any, key: str | None) -> DurableFuture[Any]: ...
    def send(self, target: Target, arg: Any, key: str | None,
             delay: timedelta | None) -> str: ...
    def awakeable(self) -> tuple[str, DurableFuture[Any]]: ...
    def complete_awakeable(self, awakeable_id: str, value: Any, reason: str | None) -> None: ...
    def cancel_invocation(self, invocation_id: str) -> None: ...
    def attach(self, invocation_id: str) -> DurableFuture[Any]: ...
    def promise_await(self, name: str) -> DurableFuture[Any]: ...
    def promise_peek(self, name: str) -> DurableFuture[Any]: ...
    def promise_complete(self, name: str, value: Any, failure: str | None) -> None: ...
    def with_timeout(self, fut: DurableFuture[T], timeout: timedelta) -> DurableFuture[T]: ...
    def select(self, futures: Mapping[str, DurableFuture[Any]]) -> DurableFuture[tuple[str, Any]]: ...
    def emit(self, topic: str, value: Any, key: str | bytes | None,
             headers: Mapping[str, str | bytes] | None) -> None: ...
    def time(self) -> Awaitable[float]: ...
    def get(self, name: str) -> Awaitable[Any]: ...
    def state_keys(self) -> Awaitable[list[str]]: ...
    def set(self, name: str, value: Any) -> None: ...
    def clear(self, name: str) -> None: ...
    def clear_all(self) -> None: ...
    def random_seed(self) -> int: ...
    def patched(self, name: str) -> bool: ...
    def resolve_target(self, target: Callable[..., Any] | str, key: str | None) -> HandlerDef: ...


class Context:
    """What every handler can do: durable steps, emitted records, deterministic randomness and time."""

    __slots__ = ("_driver", "_random")

    def __init__(self, driver: _Driver) -> None:
        self._driver = driver
        self._random: random.Random | None = None

    @property
    def invocation_id(self) -> str:
        """This invocation's id: stable across retries, crashes and replays."""
        return self._driver.invocation_id

    @overload
    def run(self, name: str, fn: Callable[..., Awaitable[T]], *args: Any,
            retry: RetryPolicy | None = None) -> DurableFuture[T]: ...
    @overload
    def run(self, name: str, fn: Callable[..., T], *args: Any,
            retry: RetryPolicy | None = None) -> DurableFuture[T]: ...
    def run(self, name: str, fn: Callable[..., Any], *args: Any,
            retry: RetryPolicy | None = None) -> DurableFuture[Any]:
        """Run ``fn(*args)`` as a durable step: its result is journaled and, once committed, returned;
        on replay the journaled result comes back without running ``fn``. Sync functions run on a
        worker thread. Failures retry with `retry` (the app's step policy by default); a
        ``TerminalError`` fails the step at once. The result must be serializable (JSON by default)."""
        return self._driver.run(name, fn, args, retry)

    def emit(self, topic: str, value: Any, *, key: str | bytes | None = None,
             headers: Mapping[str, str | bytes] | None = None) -> None:
        """Produce a record to `topic`, exactly once, committed with this step of the invocation.
        `value` goes through the app's serde unless it is ``bytes``."""
        self._driver.emit(topic, value, key, headers)

    def random(self) -> random.Random:
        """A random generator seeded by the invocation id: the same sequence on every replay."""
        if self._random is None:
            self._random = random.Random(self._driver.random_seed())
        return self._random

    def uuid(self) -> uuid.UUID:
        """A version-4 UUID from ``random()``: the same on every replay."""
        return uuid.UUID(int=self.random().getrandbits(128), version=4)

    def time(self) -> Awaitable[float]:
        """Wall-clock time (seconds since the epoch), journaled: a replay sees the original time."""
        return self._driver.time()

    def patched(self, name: str) -> bool:
        """Whether this invocation runs the code of patch `name`: a deploy that changes what a handler
        does guards the change with it (``if ctx.patched("audit"): await ctx.run("audit", ...)``), so
        invocations in flight keep replaying their journals. True for invocations that reach this
        point under code with the patch (a marker is journaled); False for one whose journal was
        recorded by code before the patch and goes on past this point. The first call per name
        decides; later calls in the same invocation answer the same (docs/deploy.md)."""
        return self._driver.patched(name)

    def sleep(self, duration: timedelta) -> DurableFuture[None]:
        """A durable timer: survives crashes and restarts; while it waits the invocation may be
        evicted from memory and is replayed from its journal when the timer fires."""
        return self._driver.sleep(duration)

    @overload
    def call(self, handler: Callable[[Any, In], Awaitable[Out]] | HandlerRef[In, Out], arg: In, *,
             key: str | None = None) -> DurableFuture[Out]: ...
    @overload
    def call(self, handler: str, arg: Any, *, key: str | None = None) -> DurableFuture[Any]: ...
    def call(self, handler: Target, arg: Any, *, key: str | None = None) -> DurableFuture[Any]:
        """Invoke `handler` (a registered handler function, a ``p.ref(...)`` or ``"service/handler"``)
        with `arg` and wait for its one answer. `key` addresses a virtual object or workflow. The callee
        runs exactly once however often anything is redelivered; its ``TerminalError`` is raised here.
        A dataclass or pydantic `arg` travels as its plain form; the result comes back as the callee's
        (or the reference's) output model."""
        return self._driver.call(handler, arg, key)

    @overload
    def send(self, handler: Callable[[Any, In], Awaitable[Any]] | HandlerRef[In, Any], arg: In, *,
             key: str | None = None, delay: timedelta | None = None) -> str: ...
    @overload
    def send(self, handler: str, arg: Any, *, key: str | None = None, delay: timedelta | None = None) -> str: ...
    def send(self, handler: Target, arg: Any, *, key: str | None = None, delay: timedelta | None = None) -> str:
        """Invoke `handler` one-way, optionally after `delay` (a durable timer). Returns the callee's
        invocation id."""
        return self._driver.send(handler, arg, key, delay)

    def resolve_awakeable(self, awakeable_id: str, value: Any) -> None:
        """Complete awakeable `awakeable_id` (of any invocation, on any partition) with `value` (JSON).
        Exactly once: the completion is journaled and sent with this invocation's commit, so a replay
        does not send it again. Completing an awakeable already completed does nothing; an id that
        names no awakeable is dead-lettered by its owner; an id that is not an awakeable id raises
        TerminalError (``error_type`` ``BadAwakeable``)."""
        self._driver.complete_awakeable(awakeable_id, value, None)

    def reject_awakeable(self, awakeable_id: str, reason: str) -> None:
        """Fail awakeable `awakeable_id`: its awaiter gets TerminalError(reason). Exactly once, as
        ``resolve_awakeable``."""
        self._driver.complete_awakeable(awakeable_id, None, reason)

    def cancel(self, invocation_id: str) -> None:
        """Cancel invocation `invocation_id` (any partition), as ``Client.cancel`` does: it gets
        ``InvocationCancelled`` at its next durable await and can compensate. Exactly once: journaled
        and sent with this invocation's commit. Cancelling a finished or unknown invocation does
        nothing."""
        self._driver.cancel_invocation(invocation_id)

    def attach(self, invocation_id: str) -> DurableFuture[Any]:
        """The outcome of invocation `invocation_id` (any partition; e.g. the id ``ctx.send`` returned):
        its result once it finished, or its TerminalError raised (``InvocationCancelled``,
        ``InvocationKilled``). A durable wait like ``ctx.call``'s: it survives crashes, composes with
        ``p.select``, ``p.gather`` and ``with_timeout``, and attaching never affects the target. An id
        no partition knows (never created, purged after its retention, or a delayed send not due yet)
        raises TerminalError with ``error_type`` ``InvocationNotFound``. The value is the target's
        result decoded by the app's serde (plain data, not the target's output model)."""
        return self._driver.attach(invocation_id)

    def awakeable(self) -> tuple[str, DurableFuture[Any]]:
        """An id to hand to the outside world and a future that completes when something resolves
        (``Client.resolve_awakeable``) or rejects it. Values travel as JSON."""
        return self._driver.awakeable()

    def schedule(self, name: str, target: Callable[..., Awaitable[Any]] | str, payload: Any = None, *,
                 cron: str | None = None, every: timedelta | None = None, tz: str = "UTC",
                 key: str | None = None, catch_up: CatchUp = CatchUp.LATEST,
                 grace: timedelta = DEFAULT_GRACE) -> str:
        """Create or replace schedule `name` (as ``App.schedule``): a one-way send, exactly once with
        this invocation, to the schedule's key. Returns that request's invocation id. A bad
        definition or target raises TerminalError here."""
        try:
            h = self._driver.resolve_target(target, key)
            d = ScheduleDef.build(name, h.target, payload, cron=cron, every=every, tz=tz,
                                  key=key if h.keyed else None, catch_up=catch_up, grace=grace)
        except ConfigurationError as e:
            raise TerminalError(str(e)) from None
        return self._driver.send(ENSURE, d.to_json(), d.name, None)

    def unschedule(self, name: str) -> str:
        """Remove schedule `name` (a one-way send, exactly once with this invocation); ticks it had
        sent before still run. Returns that request's invocation id."""
        return self._driver.send(REMOVE, None, name, None)


class ObjectSharedContext(Context):
    """A virtual object's shared handler: the key and read-only access to its state."""

    __slots__ = ()

    @property
    def key(self) -> str:
        """The object key (the Kafka record key)."""
        key = self._driver.key
        assert key is not None  # the engine never builds an object context without a key
        return key

    def get(self, name: str) -> Awaitable[Any]:
        """The value of state entry `name` (None when unset), journaled for replay."""
        return self._driver.get(name)

    def state_keys(self) -> Awaitable[list[str]]:
        """The names of this key's state entries, sorted."""
        return self._driver.state_keys()


class ObjectContext(ObjectSharedContext):
    """A virtual object's exclusive handler: state writes too. Writes commit with the invocation's
    journal in the same Kafka transaction."""

    __slots__ = ()

    def set(self, name: str, value: Any) -> None:
        """Set state entry `name` (serialized with the app's serde)."""
        self._driver.set(name, value)

    def clear(self, name: str) -> None:
        """Remove state entry `name`."""
        self._driver.clear(name)

    def clear_all(self) -> None:
        """Remove every state entry of this key."""
        self._driver.clear_all()


class DurablePromise:
    """A workflow's named promise: completed once (by any handler of the workflow), awaited by any."""

    __slots__ = ("_driver", "name")

    def __init__(self, driver: _Driver, name: str) -> None:
        self._driver = driver
        self.name = name

    def __await__(self) -> Generator[Any, None, Any]:
        return self._driver.promise_await(self.name).__await__()

    def value(self) -> DurableFuture[Any]:
        """The promise's value once completed (its rejection is raised as TerminalError)."""
        return self._driver.promise_await(self.name)

    def peek(self) -> DurableFuture[Any]:
        """The value if already resolved, else None (a rejection is raised)."""
        return self._driver.promise_peek(self.name)

    def resolve(self, value: Any) -> None:
        """Complete the promise with `value`; completing it a second time raises TerminalError."""
        self._driver.promise_complete(self.name, value, None)

    def reject(self, reason: str) -> None:
        """Fail the promise: awaiting it raises TerminalError(reason)."""
        self._driver.promise_complete(self.name, None, reason)


class WorkflowSharedContext(ObjectSharedContext):
    """A workflow's shared handler: read its state, await and complete its promises."""

    __slots__ = ()

    def promise(self, name: str) -> DurablePromise:
        """The workflow's durable promise `name`."""
        return DurablePromise(self._driver, name)


class WorkflowContext(ObjectContext):
    """A workflow's ``run`` handler (exactly once per workflow key): state writes and promises."""

    __slots__ = ()

    def promise(self, name: str) -> DurablePromise:
        """The workflow's durable promise `name`."""
        return DurablePromise(self._driver, name)
