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
from processor._models import PLAIN, Shape, handler_shapes, shape_of
from processor._retry import RetryPolicy
from processor._serde import JsonSerde, Serde

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
C = TypeVar("C")
In = TypeVar("In")  # a handler's input
Out = TypeVar("Out")  # a handler's output

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
            h = HandlerDef(service=self.name, name=name or fn.__name__, kind=kind, fn=fn, input_serde=serde)
            self._app._add_handler(h)
            with contextlib.suppress(AttributeError):  # one that takes no attributes: by target string only
                setattr(fn, _DEF_ATTR, h)  # so a Client can call the function itself (target and types)
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
        return dict(self._handlers)

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
