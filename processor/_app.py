"""The app registry: services, virtual objects, their handlers and topic bindings."""

from __future__ import annotations

import enum
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from processor._errors import ConfigurationError
from processor._kafka_config import KafkaConfig, from_code
from processor._retry import RetryPolicy
from processor._schedule import DEFAULT_GRACE, CatchUp, ScheduleDef
from processor._serde import JsonSerde, Serde

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
C = TypeVar("C")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
    target: str = field(init=False)  # "<service>/<name>"
    keyed: bool = field(init=False)  # every kind but a service's handlers has a key

    def __post_init__(self) -> None:  # computed once: read per record
        object.__setattr__(self, "target", f"{self.service}/{self.name}")
        object.__setattr__(self, "keyed", self.kind is not HandlerKind.SERVICE)


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

    def _register(self, kind: HandlerKind, name: str | None,
                  serde: Serde[Any] | None) -> Callable[[F], F]:
        def decorate(fn: F) -> F:
            if not inspect.iscoroutinefunction(fn):
                raise ConfigurationError(f"handler {fn.__qualname__} must be an `async def` function")
            self._app._add_handler(HandlerDef(service=self.name, name=name or fn.__name__, kind=kind,
                                              fn=fn, input_serde=serde))
            return fn  # type: ignore[return-value]  # mypy narrows F through iscoroutinefunction
        return decorate


class ServiceDefinition(_Definition[Any]):
    """A stateless service; its handlers take a ``Context``."""

    def handler(self, *, name: str | None = None, serde: Serde[Any] | None = None) -> Callable[[F], F]:
        """Register an async ``(ctx: Context, value) -> result`` handler."""
        return self._register(HandlerKind.SERVICE, name, serde)


class WorkflowDefinition(_Definition[Any]):
    """A workflow: its ``run`` handler executes exactly once per workflow key (submitting it again
    returns the first run's result); its other handlers are shared and may complete its promises."""

    def run(self, *, serde: Serde[Any] | None = None) -> Callable[[F], F]:
        """Register the ``(ctx: WorkflowContext, value)`` run handler (one per workflow)."""
        return self._register(HandlerKind.WORKFLOW_RUN, "run", serde)

    def handler(self, *, name: str | None = None, serde: Serde[Any] | None = None) -> Callable[[F], F]:
        """Register a shared ``(ctx: WorkflowSharedContext, value)`` handler."""
        return self._register(HandlerKind.WORKFLOW_SHARED, name, serde)


class ObjectDefinition(_Definition[Any]):
    """A virtual object: state per key; exclusive handlers of one key run one at a time."""

    def handler(self, *, shared: bool = False, name: str | None = None,
                serde: Serde[Any] | None = None) -> Callable[[F], F]:
        """Register an exclusive ``(ctx: ObjectContext, value)`` handler, or with ``shared=True`` a
        concurrent read-only ``(ctx: ObjectSharedContext, value)`` handler."""
        return self._register(HandlerKind.SHARED if shared else HandlerKind.EXCLUSIVE, name, serde)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppConfig:
    """Tunables of an app; every field can be passed to ``App(name, ...)`` as a keyword."""

    serde: Serde[Any] = field(default_factory=JsonSerde)
    retention: timedelta = timedelta(days=1)     # how long an invoked invocation's outcome stays for callers
    journal_retention: timedelta = timedelta(0)  # how long finished journals (and topic records' rows) stay
    invocation_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(
        initial_interval=timedelta(milliseconds=500), max_interval=timedelta(seconds=60)))
    step_retry: RetryPolicy = field(default_factory=RetryPolicy)
    partitions: int | None = None            # internal topics' partition count when no input exists
    max_in_flight: int = 5_000               # running + queued invocations before input topics pause
    step_threads: int = 64                   # threads for synchronous ctx.run bodies
    transaction_timeout_ms: int = 10_000       # as Kafka Streams under EOS; see docs/architecture.md
    transactional_producers: int = 2         # taking turns per commit cycle (docs/decisions/002)
    suspend_after: timedelta = timedelta(seconds=5)  # idle time before a waiting invocation leaves memory
    commit_linger_ms: float = 50.0           # max wait for step bodies (and their acknowledgements) running at a seal
    max_cycle_records: int = 10_000          # writes + outputs a cycle holds before input waits for it to seal
    # librdkafka settings for every Kafka client (security, tuning); a --kafka-config file and
    # PROCESSOR_KAFKA_* variables override them key by key (docs/security.md)
    kafka_config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)


class App:
    """An application: a registry of handlers plus their topic bindings.

    ``name`` is the consumer group id and the prefix of the internal topics ``<name>.inbox``,
    ``<name>.changelog`` and ``<name>.dlq``.
    """

    def __init__(self, name: str, **config: Any) -> None:
        if not _NAME.match(name):
            raise ConfigurationError(f"app name {name!r} must match {_NAME.pattern} (it names Kafka topics)")
        self.name = name
        try:
            self.config = AppConfig(**config)
        except TypeError as e:
            raise ConfigurationError(f"App({name!r}): {e}") from e
        self.kafka_config: KafkaConfig = from_code(self.config.kafka_config, f"App({name!r}, kafka_config=...)")
        self._definitions: dict[str, _Definition[Any]] = {}
        self._handlers: dict[str, HandlerDef] = {}
        self._by_fn: dict[Callable[..., Any], HandlerDef] = {}
        self._bindings: dict[str, Binding] = {}
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
        if topic in (self.inbox_topic, self.changelog_topic, self.dlq_topic, self.results_topic, self.steps_topic,
                     f"{self.name}.instances"):
            raise ConfigurationError(f"{topic!r} is an internal topic of app {self.name!r}")
        self._bindings[topic] = Binding(topic=topic, handler=h,
                                        serde=serde or h.input_serde or self.config.serde)

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
