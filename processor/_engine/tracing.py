"""OpenTelemetry spans for invocations and steps, with W3C trace context carried in Kafka headers.

Optional: without ``opentelemetry-api`` installed (``pip install processor[otel]``), or while the
process has not set a tracer provider of its own (the API's default is a no-op), there is no
tracer and the engine pays one ``None`` check per invocation. With one:

- an invocation *attempt* is a span (``<service>/<handler>``), child of the trace context in the
  headers of the record or command that started the invocation — a topic record's own headers,
  or those its caller put on the invoke command — so a request that crosses handlers and
  partitions is one trace; a replay after a crash or a suspension is a new attempt span in it;
- each ``ctx.run`` attempt is a child span (``step <name>``);
- records a handler emits, and the invoke commands of its calls and sends, carry the attempt's
  context in a ``traceparent`` (and ``tracestate``) header.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the optional extra is not installed
    trace = None  # type: ignore[assignment]

HEADERS = ("traceparent", "tracestate")


def tracer() -> Tracer | None:
    """The engine's tracer, or None when tracing is off (no API installed, no provider set)."""
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider.get_tracer("processor")


def start_attempt(t: Tracer, *, name: str, headers: Mapping[str, bytes], attributes: dict[str, Any],
                  from_record: bool) -> Span:
    """The span of one invocation attempt, child of the context in `headers` (if any)."""
    carrier = {k: v.decode("latin-1") for k, v in headers.items() if k in HEADERS}
    parent = TraceContextTextMapPropagator().extract(carrier) if carrier else None
    return t.start_span(name, context=parent, kind=SpanKind.CONSUMER if from_record else SpanKind.SERVER,
                        attributes=attributes)


_UNTRACED = contextlib.nullcontext()  # reusable: what ``current(None)`` costs is one ``with``


def current(span: Span | None) -> contextlib.AbstractContextManager[Any]:
    """`span` is the current span inside (spans a handler or step body starts become its children)."""
    if span is None:
        return _UNTRACED
    return trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)


def start_step(t: Tracer | None, parent: Span, name: str, attempt: int) -> Span:
    assert t is not None  # a parent span means a tracer
    return t.start_span(f"step {name}", context=trace.set_span_in_context(parent),
                        kind=SpanKind.INTERNAL, attributes={"processor.step.attempt": attempt})


def end(span: Span, error: BaseException | str | None = None) -> None:
    """End `span`, as failed when there is an `error` (an exception, or a failure's description)."""
    if error is not None:
        if isinstance(error, BaseException):
            span.record_exception(error)
        span.set_status(StatusCode.ERROR, str(error))
    span.end()


def current_headers() -> list[tuple[str, bytes]]:
    """The trace context active in the calling code as headers (none without OpenTelemetry or an
    active span): what a Client puts on the commands it sends."""
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return []
    return inject(trace.get_current_span())


def inject(span: Span, headers: Iterable[tuple[str, bytes]] = ()) -> list[tuple[str, bytes]]:
    """`headers` with `span`'s trace context in place of any they carried."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    return [*((k, v) for k, v in headers if k not in HEADERS), *((k, v.encode()) for k, v in carrier.items())]
