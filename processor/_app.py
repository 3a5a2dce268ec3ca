"""The app registry: services, virtual objects, their handlers and topic bindings."""

from __future__ import annotations

import contextlib
import enum
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Generic, TypeVar, overload

from processor._errors import ConfigurationError
from processor._kafka_config import KafkaConfig, from_code
from processor._limits import Limit, Rate, checked_limit
from processor._models import PLAIN, Shape, handler_shapes, shape_of
from processor._retry import OnExhausted, RetryPolicy
from processor._schedule import DEFAULT_GRACE, CatchUp, ScheduleDef
from processor._serde import JsonSerde, Serde

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
C = TypeVar("C")
In = TypeVar("In")  # a handler's input
Out = TypeVar("Out")  # a handler's output

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class HandlerKind(enum.Enum):
    SERVICE = "service"        # stateless, any number concurrently
    EXCLUSIVE = "exclusive"    # object handler: one per key at a time, in arrival order
    SHARED = "shared"          # object handler with read-only state, concurrent
    WORKFLOW_RUN = "workflow_run"        # a workflow's run: exactly once per workflow key
    WORKFLOW_SHARED = "workflow_shared"  # a workflow's other handlers: read state, complete promises

    exclusive: bool  # runs one at a time per key, in arrival order (set below: read per action)


for _kind in HandlerKind:
    _kind.exclusive = _kind in (HandlerKind.EXCLUSIVE, HandlerKind.WORKFLOW_RUN)


@dataclass(frozen=True, slots=True, kw_only=True)
class HandlerDef:
    service: str
    name: str
    kind: HandlerKind
    fn: Callable[..., Awaitable[Any]]
    input_serde: Serde[Any] | None  # None: the app's default serde
    retry: RetryPolicy  # when an attempt that raised runs again, and when that stops (``on_exhausted``)
    on_exhausted: OnExhausted
    limit: Limit | None = None  # concurrency / rate limits: invocations wait in a queue (decision 014)
    target: str = field(init=False)  # "<service>/<name>"
    keyed: bool = field(init=False)  # every kind but a service's handlers has a key
    input_shape: Shape = field(init=False)  # a dataclass / pydantic input model, from the type hints
    output_shape: Shape = field(init=False)  # the same for the result

    def __post_init__(self) -> None:  # computed once: read per record
        object.__setattr__(self, "target", f"{self.service}/{self.name}")
        object.__setattr__(self, "keyed", self.kind is not HandlerKind.SERVICE)
        shapes = handler_shapes(self.fn)
        object.__setattr__(self, "input_shape", shapes[0])
        object.__setattr__(self, "output_shape", shapes[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class HandlerRef(Generic[In, Out]):
    """A handler named by its target (``"service/handler"``) with its input and output types, for a
    caller that does not import the handler's code: ``p.ref("shop/place", Order, Receipt)``. A
    dataclass or pydantic output type turns the result back into that model."""

    target: str
    input_type: Any = None
    output_type: Any = None

    def __post_init__(self) -> None:
        service, _, handler = self.target.partition("/")
        if not service or not handler or "/" in handler:
            raise ConfigurationError(f"a handler target is 'service/handler', got {self.target!r}")

    @property
    def input_shape(self) -> Shape:
        return shape_of(self.input_type)

    @property
    def output_shape(self) -> Shape:
        return shape_of(self.output_type)


@overload
def ref(target: str) -> HandlerRef[Any, Any]: ...
@overload
def ref(target: str, input_type: type[In]) -> HandlerRef[In, Any]: ...
@overload
def ref(target: str, input_type: type[In], output_type: type[Out]) -> HandlerRef[In, Out]: ...
def ref(target: str, input_type: Any = None, output_type: Any = None) -> HandlerRef[Any, Any]:
    """A typed reference to handler `target` (``"service/handler"``): ``client.call`` and
    ``ctx.call`` take it like the handler function, and type checkers infer the result's type."""
    return HandlerRef(target=target, input_type=input_type, output_type=output_type)


Target = Callable[..., Any] | HandlerRef[Any, Any] | str  # what ctx.call, ctx.send and Client.call take

_DEF_ATTR = "__processor_handler__"


def registered(fn: Callable[..., Any]) -> HandlerDef | None:
    """The definition a handler decorator attached to `fn` (None: not a registered handler)."""
    h = getattr(fn, _DEF_ATTR, None)
    return h if isinstance(h, HandlerDef) else None


def target_shapes(target: Any) -> tuple[str, Shape, Shape]:
    """A call's target (``"service/handler"``, a HandlerRef or a registered handler function) as
    its target string and the shapes of its input and output."""
    if isinstance(target, str):
        return target, PLAIN, PLAIN
    if isinstance(target, HandlerRef):
        return target.target, target.input_shape, target.output_shape
    h = registered(target) if callable(target) else None
    if h is None:
        raise ConfigurationError(f"{target!r} is not a handler: pass a function decorated as a handler, "
                                 "p.ref('service/handler', ...) or a 'service/handler' string")
    return h.target, h.input_shape, h.output_shape


@dataclass(frozen=True, slots=True, kw_only=True)
class Output:
    """A topic handlers emit to, declared with ``app.output``: checked at start, created when missing
    if `partitions` is given."""

    topic: str
    partitions: int | None
    config: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    """A Kafka topic bound to a handler: each record starts one invocation."""

    topic: str
    handler: HandlerDef
    serde: Serde[Any]


class _Definition(Generic[C]):
    _kind_default: HandlerKind

    def __init__(self, app: App, name: str) -> None:
        self._app = app
        self.name = name

    def _register(self, kind: HandlerKind, name: str | None, serde: Serde[Any] | None,
                  retry: RetryPolicy | None, on_exhausted: OnExhausted | None, *, concurrency: int | None = None,
                  concurrency_per_key: int | None = None, rate: Rate | None = None) -> Callable[[F], F]:
        cfg = self._app.config
        policy = _checked_retry(retry if retry is not None else cfg.invocation_retry, "retry")
        exhausted = _checked_on_exhausted(on_exhausted if on_exhausted is not None else cfg.on_exhausted)
        limit = checked_limit(f"handler {self.name}/{name or '...'}", concurrency=concurrency,
                              concurrency_per_key=concurrency_per_key, rate=rate, exclusive=kind.exclusive)

        def decorate(fn: F) -> F:
            if not inspect.iscoroutinefunction(fn):
                raise ConfigurationError(f"handler {fn.__qualname__} must be an `async def` function")
            h = HandlerDef(service=self.name, name=name or fn.__name__, kind=kind, fn=fn, input_serde=serde,
                           retry=policy, on_exhausted=exhausted, limit=limit)
            self._app._add_handler(h)
            with contextlib.suppress(AttributeError):  # one that takes no attributes: by target string only
                setattr(fn, _DEF_ATTR, h)  # so a Client can call the function itself (target and types)
            return fn  # type: ignore[return-value]  # mypy narrows F through iscoroutinefunction
        return decorate


def _checked_retry(policy: Any, what: str) -> RetryPolicy:
    if not isinstance(policy, RetryPolicy):
        raise ConfigurationError(f"{what} must be a p.RetryPolicy, not {policy!r}")
    return policy


def _checked_on_exhausted(value: Any) -> OnExhausted:
    if not isinstance(value, OnExhausted):
        choices = ", ".join(f"p.OnExhausted.{v.name}" for v in OnExhausted)
        raise ConfigurationError(f"on_exhausted must be one of {choices}, not {value!r}")
    return value


class ServiceDefinition(_Definition[Any]):
    """A stateless service; its handlers take a ``Context``."""

    def handler(self, *, name: str | None = None, serde: Serde[Any] | None = None, retry: RetryPolicy | None = None,
                on_exhausted: OnExhausted | None = None, concurrency: int | None = None,
                rate: Rate | None = None) -> Callable[[F], F]:
        """Register an async ``(ctx: Context, value) -> result`` handler. `retry`: when an attempt that
        raised runs again (default: the app's ``invocation_retry``); `on_exhausted`: what happens once
        that policy gives up (default: the app's ``on_exhausted``, ``PAUSE``). `concurrency`: at most
        this many invocations running (started, not finished) per partition; `rate`: starts at most at
        ``p.Rate(per_second=R)`` over the app (R/P per partition). Others wait, queued in arrival
        order (docs/decisions/014-limits.md)."""
        return self._register(HandlerKind.SERVICE, name, serde, retry, on_exhausted, concurrency=concurrency,
                              rate=rate)


class WorkflowDefinition(_Definition[Any]):
    """A workflow: its ``run`` handler executes exactly once per workflow key (submitting it again
    returns the first run's result); its other handlers are shared and may complete its promises."""

    def run(self, *, serde: Serde[Any] | None = None, retry: RetryPolicy | None = None,
            on_exhausted: OnExhausted | None = None) -> Callable[[F], F]:
        """Register the ``(ctx: WorkflowContext, value)`` run handler (one per workflow); `retry` and
        `on_exhausted` as for ``ServiceDefinition.handler``."""
        return self._register(HandlerKind.WORKFLOW_RUN, "run", serde, retry, on_exhausted)

    def handler(self, *, name: str | None = None, serde: Serde[Any] | None = None, retry: RetryPolicy | None = None,
                on_exhausted: OnExhausted | None = None) -> Callable[[F], F]:
        """Register a shared ``(ctx: WorkflowSharedContext, value)`` handler; `retry` and
        `on_exhausted` as for ``ServiceDefinition.handler``."""
        return self._register(HandlerKind.WORKFLOW_SHARED, name, serde, retry, on_exhausted)


class ObjectDefinition(_Definition[Any]):
    """A virtual object: state per key; exclusive handlers of one key run one at a time."""

    def handler(self, *, shared: bool = False, name: str | None = None, serde: Serde[Any] | None = None,
                retry: RetryPolicy | None = None, on_exhausted: OnExhausted | None = None,
                concurrency: int | None = None, concurrency_per_key: int | None = None,
                rate: Rate | None = None) -> Callable[[F], F]:
        """Register an exclusive ``(ctx: ObjectContext, value)`` handler, or with ``shared=True`` a
        concurrent read-only ``(ctx: ObjectSharedContext, value)`` handler; `retry` and `on_exhausted`
        as for ``ServiceDefinition.handler`` (a paused exclusive invocation keeps holding its key).
        A shared handler takes `concurrency` and `rate` as a service's, or `concurrency_per_key`: at most
        this many running per key (decision 014)."""
        return self._register(HandlerKind.SHARED if shared else HandlerKind.EXCLUSIVE, name, serde, retry,
                              on_exhausted, concurrency=concurrency, concurrency_per_key=concurrency_per_key,
                              rate=rate)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppConfig:
    """Tunables of an app; every field can be passed to ``App(name, ...)`` as a keyword."""

    serde: Serde[Any] = field(default_factory=JsonSerde)
    retention: timedelta = timedelta(days=1)     # how long an invoked invocation's outcome stays for callers
    journal_retention: timedelta = timedelta(0)  # how long finished journals (and topic records' rows) stay
    # A handler that raises runs again with this backoff, 20 attempts (about 13 minutes) at most:
    # then `on_exhausted` applies (docs/decisions/011-poison-events.md). Per handler: `retry=`.
    invocation_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(
        initial_interval=timedelta(milliseconds=500), max_interval=timedelta(seconds=60),
        max_attempts=20, max_duration=timedelta(minutes=15)))
    on_exhausted: OnExhausted = OnExhausted.PAUSE  # per handler: `on_exhausted=`
    step_retry: RetryPolicy = field(default_factory=RetryPolicy)
    partitions: int | None = None            # internal topics' partition count when no input exists
    max_in_flight: int = 5_000               # running + queued invocations before input topics pause
    step_threads: int = 64                   # threads for synchronous ctx.run bodies
    transaction_timeout: timedelta = timedelta(seconds=10)  # as Kafka Streams under EOS; docs/architecture.md
    transactional_producers: int = 2         # taking turns per commit cycle (docs/decisions/002)
    suspend_after: timedelta = timedelta(seconds=5)  # idle time before a waiting invocation leaves memory
    commit_linger: timedelta = timedelta(milliseconds=50)  # max wait at a seal for running step bodies
    max_cycle_records: int = 10_000          # writes + outputs a cycle holds before input waits for it to seal
    # librdkafka settings for every Kafka client (security, tuning); a --kafka-config file and
    # PROCESSOR_KAFKA_* variables override them key by key (docs/security.md)
    kafka_config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def transaction_timeout_ms(self) -> int:
        return int(self.transaction_timeout.total_seconds() * 1000)


# Bounds of the numeric options, inclusive (None: unbounded). Kafka brokers refuse a transaction
# timeout above their transaction.max.timeout.ms (15 min by default).
_BOUNDS: dict[str, tuple[float | timedelta, float | timedelta | None]] = {
    "retention": (timedelta(0), None),
    "journal_retention": (timedelta(0), None),
    "partitions": (1, None),
    "max_in_flight": (1, None),
    "step_threads": (1, 1024),
    "transaction_timeout": (timedelta(seconds=1), timedelta(minutes=15)),
    "transactional_producers": (1, 16),
    "suspend_after": (timedelta(0), None),
    "commit_linger": (timedelta(0), timedelta(seconds=10)),
    "max_cycle_records": (100, None),
}
# Options renamed when durations became timedeltas: the old name gets a pointer, not "unexpected keyword".
_RENAMED = {"transaction_timeout_ms": "transaction_timeout=timedelta(seconds=...)",
            "commit_linger_ms": "commit_linger=timedelta(milliseconds=...)"}


def _validate(config: AppConfig) -> None:
    """Refuse a wrong type or an out-of-range value with the option's name (ConfigurationError)."""
    def wrong(name: str, want: str) -> ConfigurationError:
        return ConfigurationError(f"App option {name}={getattr(config, name)!r}: {want}")

    for name, want in (("retention", timedelta), ("journal_retention", timedelta), ("suspend_after", timedelta),
                       ("transaction_timeout", timedelta), ("commit_linger", timedelta),
                       ("invocation_retry", RetryPolicy), ("step_retry", RetryPolicy)):
        if not isinstance(getattr(config, name), want):
            raise wrong(name, "must be a datetime.timedelta (e.g. timedelta(seconds=5))" if want is timedelta
                        else "must be a processor.RetryPolicy")
    for name in ("partitions", "max_in_flight", "step_threads", "transactional_producers", "max_cycle_records"):
        value = getattr(config, name)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if not is_int and not (name == "partitions" and value is None):
            raise wrong(name, "must be an int" + (" or None" if name == "partitions" else ""))
    for name, (low, high) in _BOUNDS.items():
        value = getattr(config, name)
        if value is None:
            continue
        if value < low or (high is not None and value > high):
            raise wrong(name, f"must be >= {low}" + (f" and <= {high}" if high is not None else ""))
    if not all(callable(getattr(config.serde, m, None)) for m in ("serialize", "deserialize")):
        raise wrong("serde", "must be a Serde (with serialize and deserialize)")
    if not isinstance(config.on_exhausted, OnExhausted):
        raise wrong("on_exhausted", "must be one of " + ", ".join(f"p.OnExhausted.{v.name}" for v in OnExhausted))
    if not isinstance(config.kafka_config, Mapping):
        raise wrong("kafka_config", "must be a mapping of librdkafka settings")
    if config.commit_linger >= config.transaction_timeout:
        raise wrong("commit_linger", f"must be shorter than transaction_timeout ({config.transaction_timeout})")


class App:
    """An application: a registry of handlers plus their topic bindings.

    ``name`` is the consumer group id and the prefix of the internal topics ``<name>.inbox``,
    ``<name>.changelog`` and ``<name>.dlq``.
    """

    def __init__(self, name: str, **config: Any) -> None:
        if not _NAME.match(name):
            raise ConfigurationError(f"app name {name!r} must match {_NAME.pattern} (it names Kafka topics)")
        self.name = name
        for old, new in _RENAMED.items():
            if old in config:
                raise ConfigurationError(f"App({name!r}): {old} is now {new}")
        try:
            self.config = AppConfig(**config)
        except TypeError as e:
            raise ConfigurationError(f"App({name!r}): {e}") from e
        self.kafka_config: KafkaConfig = from_code(self.config.kafka_config, f"App({name!r}, kafka_config=...)")
        self._definitions: dict[str, _Definition[Any]] = {}
        self._handlers: dict[str, HandlerDef] = {}
        self._by_fn: dict[Callable[..., Any], HandlerDef] = {}
        self._bindings: dict[str, Binding] = {}
        self._outputs: dict[str, Output] = {}
        self._schedules: dict[str, ScheduleDef] = {}
        from processor import _schedules  # the built-in schedule object (it imports this module)

        _schedules.install(self)
        self._internal = frozenset(self._handlers)

    @property
    def inbox_topic(self) -> str:
        return f"{self.name}.inbox"

    @property
    def results_topic(self) -> str:
        return f"{self.name}.results"

    @property
    def changelog_topic(self) -> str:
        return f"{self.name}.changelog"

    @property
    def dlq_topic(self) -> str:
        return f"{self.name}.dlq"

    @property
    def steps_topic(self) -> str:
        """Step results made durable by acknowledgement before their cycle commits (decision 007)."""
        return f"{self.name}.steps"

    def service(self, name: str = "service") -> ServiceDefinition:
        """Define a stateless service named `name`."""
        d = ServiceDefinition(self, name)
        self._define(d)
        return d

    def virtual_object(self, name: str) -> ObjectDefinition:
        """Define a virtual object named `name`, keyed by the Kafka record key."""
        d = ObjectDefinition(self, name)
        self._define(d)
        return d

    def workflow(self, name: str) -> WorkflowDefinition:
        """Define a workflow named `name`, keyed by the workflow id."""
        d = WorkflowDefinition(self, name)
        self._define(d)
        return d

    def subscribe(self, topic: str, handler: Callable[..., Awaitable[Any]], *,
                  serde: Serde[Any] | None = None) -> None:
        """Bind `topic`: each record starts an invocation of `handler` (key = record key for objects).
        The value is decoded by `serde`, else the handler's serde, else the app's default (JSON)."""
        h = self.handler_for(handler)
        if topic in self._bindings:
            raise ConfigurationError(f"topic {topic!r} is already bound to {self._bindings[topic].handler.target}")
        if topic in self._internal_topics():
            raise ConfigurationError(f"{topic!r} is an internal topic of app {self.name!r}")
        self._bindings[topic] = Binding(topic=topic, handler=h,
                                        serde=serde or h.input_serde or self.config.serde)

    def output(self, topic: str, *, partitions: int | None = None,
               config: Mapping[str, str] | None = None) -> str:
        """Declare `topic` as an output of the app's handlers. Each instance checks it exists when it
        starts; a missing one is created with `partitions` (and topic `config`), or, without
        `partitions`, refuses the start. Emitting to an undeclared topic works if the topic exists;
        no emit ever creates a topic. Returns `topic`, to name it once::

            EVENTS = app.output("order-events", partitions=4)
        """
        if not isinstance(topic, str) or not _TOPIC.match(topic):
            raise ConfigurationError(f"app.output({topic!r}): a topic name is 1-249 of [A-Za-z0-9._-]")
        if topic in self._internal_topics() or topic in self._bindings:
            raise ConfigurationError(f"app.output({topic!r}): it is an internal topic or an input of app {self.name!r}")
        if topic in self._outputs:
            raise ConfigurationError(f"app.output({topic!r}) is declared twice")
        if partitions is not None and (not isinstance(partitions, int) or isinstance(partitions, bool)
                                       or partitions < 1):
            raise ConfigurationError(f"app.output({topic!r}, partitions={partitions!r}): must be an int >= 1")
        if config is not None and not (isinstance(config, Mapping)
                                       and all(isinstance(k, str) and isinstance(v, str) for k, v in config.items())):
            raise ConfigurationError(f"app.output({topic!r}, config=...): must map topic settings to strings")
        self._outputs[topic] = Output(topic=topic, partitions=partitions, config=MappingProxyType(dict(config or {})))
        return topic

    @property
    def outputs(self) -> dict[str, Output]:
        return dict(self._outputs)

    def _internal_topics(self) -> tuple[str, ...]:
        return (self.inbox_topic, self.changelog_topic, self.dlq_topic, self.results_topic, self.steps_topic,
                f"{self.name}.instances")
    def schedule(self, name: str, target: Callable[..., Awaitable[Any]] | str, payload: Any = None, *,
                 cron: str | None = None, every: timedelta | None = None, tz: str = "UTC",
                 key: str | None = None, catch_up: CatchUp = CatchUp.LATEST,
                 grace: timedelta = DEFAULT_GRACE) -> None:
        """Invoke `target` (a handler, or ``"service/handler"``; `key` for an object or workflow) on
        every tick of cron expression `cron` in time zone `tz`, or every `every` (aligned to the Unix
        epoch), each tick exactly once across instances and restarts. The handler gets
        ``{"schedule": name, "at": <tick, ISO 8601 in tz>, "at_ms": <epoch ms>, "payload": payload}``.
        Ticks more than `grace` late (nothing ran) are handled by `catch_up`. Every instance ensures
        the schedule at start; a changed definition replaces the running one (README, Schedules)."""
        h = self.handler_for(target) if callable(target) else self.handler(target)
        if h is None:
            raise ConfigurationError(f"schedule {name!r}: no handler {target!r} on app {self.name!r}")
        if h.keyed and key is None:
            raise ConfigurationError(f"schedule {name!r}: {h.target} is keyed: pass key=...")
        if name in self._schedules:
            raise ConfigurationError(f"schedule {name!r} is defined twice on app {self.name!r}")
        self._schedules[name] = ScheduleDef.build(name, h.target, payload, cron=cron, every=every, tz=tz,
                                                  key=key if h.keyed else None, catch_up=catch_up, grace=grace)

    @property
    def schedules(self) -> dict[str, ScheduleDef]:
        """The schedules declared in code (ensured by every instance at start)."""
        return dict(self._schedules)

    def handler_for(self, fn: Callable[..., Any]) -> HandlerDef:
        """The registered definition of a handler function."""
        try:
            return self._by_fn[fn]
        except (KeyError, TypeError):
            raise ConfigurationError(f"{fn!r} is not a handler registered on app {self.name!r}") from None

    def handler(self, target: str) -> HandlerDef | None:
        """The handler registered as ``service/handler``, if any."""
        return self._handlers.get(target)

    @property
    def bindings(self) -> dict[str, Binding]:
        return dict(self._bindings)

    @property
    def handlers(self) -> dict[str, HandlerDef]:
        """The app's own handlers (not those of the built-in schedule object)."""
        return {t: h for t, h in self._handlers.items() if t not in self._internal}

    def _define(self, d: _Definition[Any]) -> None:
        if not _NAME.match(d.name):
            raise ConfigurationError(f"name {d.name!r} must match {_NAME.pattern}")
        if d.name in self._definitions:
            raise ConfigurationError(f"{d.name!r} is already defined on app {self.name!r}")
        self._definitions[d.name] = d

    def _add_handler(self, h: HandlerDef) -> None:
        if h.target in self._handlers:
            raise ConfigurationError(f"handler {h.target} is registered twice")
        self._handlers[h.target] = h
        self._by_fn[h.fn] = h
