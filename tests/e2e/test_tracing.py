"""Tracing: a call chain A -> B -> C across partitions is one OpenTelemetry trace, continued from the
trace context in the input record's headers, and the record C emits carries it on.

The engine runs in this test's process, with the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import processor as p
from processor._engine import routing
from processor._engine.engine import Engine
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e

PARTITIONS = 4
EXPORTER = InMemorySpanExporter()


def _provider() -> None:
    """The SDK provider with the in-memory exporter (a process sets its global provider once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    assert isinstance(provider, TracerProvider), "another test set a provider this test cannot export from"
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))


def _keys_on_distinct_partitions() -> tuple[str, str]:
    """An object key for B and one for C on two different partitions."""
    b = "kb"
    c = next(k for k in (f"kc{i}" for i in range(100)) if routing.partition_for_key(k.encode(), PARTITIONS)
             != routing.partition_for_key(b.encode(), PARTITIONS))
    return b, c


def _app(name: str, topic: str, out: str, kb: str, kc: str) -> p.App:
    app = p.App(name)
    a, b, c = app.service("a"), app.virtual_object("b"), app.virtual_object("c")

    def double(n: int) -> int:
        return 2 * n

    @c.handler()
    async def last(ctx: p.ObjectContext, n: int) -> int:
        v = await ctx.run("double", double, n)
        ctx.emit(out, {"v": v}, key=ctx.key)
        return int(v)

    @b.handler()
    async def middle(ctx: p.ObjectContext, n: int) -> int:
        return int(await ctx.call(last, n + 1, key=kc))

    @a.handler()
    async def first(ctx: p.Context, ev: dict[str, Any]) -> int:
        return int(await ctx.call(middle, ev["n"], key=kb))

    app.subscribe(topic, first)
    return app


def test_a_call_chain_across_partitions_is_one_trace_continued_from_the_input_record(
        kafka: Kafka, tmp_path: Path) -> None:
    _provider()
    name = kafka.unique("trace")
    topic, out = kafka.create_topic(f"{name}-in", PARTITIONS), kafka.create_topic(f"{name}-out", PARTITIONS)
    kb, kc = _keys_on_distinct_partitions()
    app = _app(name, topic, out, kb, kc)

    root = trace.get_tracer("test").start_span("client request")
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(root))
    root.end()
    trace_id = root.get_span_context().trace_id

    client_span: list[int] = []  # a Client call made inside a span of the caller's

    async def scenario() -> None:
        engine = Engine(app, bootstrap_servers=kafka.bootstrap, state_dir=tmp_path / "state", instance_id="t1")
        task = asyncio.create_task(engine.run())
        try:
            await asyncio.wait_for(engine.ready.wait(), 60)
            producer = Producer(kafka.config(**{"partitioner": "murmur2_random"}))
            producer.produce(topic, key=b"request-1", value=orjson.dumps({"n": 20}),
                             headers=[(k, v.encode()) for k, v in carrier.items()])
            assert producer.flush(30) == 0
            deadline = time.monotonic() + 60
            while not kafka.drain(out):
                assert not task.done(), task.exception() if task.done() else ""
                assert time.monotonic() < deadline, "no output within 60 s"
                await asyncio.sleep(0.2)
            async with p.Client(kafka.bootstrap, app.name) as client:
                with trace.get_tracer("test").start_as_current_span("client call") as span:
                    client_span.append(span.get_span_context().span_id)
                    assert await asyncio.wait_for(client.call("a/first", {"n": 1}), 60) == 4
        finally:
            engine.request_stop()
            await asyncio.wait_for(task, 60)
    asyncio.run(scenario())

    emitted, _ = kafka.drain(out)
    assert orjson.loads(emitted.value or b"") == {"v": 42}
    headers = {k: v.decode() for k, v in emitted.headers}
    assert int(headers["traceparent"].split("-")[1], 16) == trace_id, "the emitted record carries the trace on"

    names = {"a/first", "b/middle", "c/last", "step double"}
    wait_until(lambda: names <= {s.name for s in EXPORTER.get_finished_spans()}, 10,
               "every handler's and the step's span ended")
    spans = [s for s in EXPORTER.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id]
    by_name: dict[str, list[ReadableSpan]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    assert names <= set(by_name), (
        f"spans of the trace: {sorted(by_name)}; all spans: {sorted({s.name for s in EXPORTER.get_finished_spans()})}")

    def parent_ids(name: str) -> set[int]:
        return {s.parent.span_id for s in by_name[name] if s.parent is not None}

    def ids(name: str) -> set[int]:
        return {s.context.span_id for s in by_name[name] if s.context is not None}

    assert root.get_span_context().span_id in parent_ids("a/first"), "A continues the input record's context"
    assert parent_ids("b/middle") & ids("a/first"), "B's attempt is a child of A's"
    assert parent_ids("c/last") & ids("b/middle"), "C's attempt is a child of B's"
    assert parent_ids("step double") & ids("c/last"), "the step is a child of C's attempt"
    partitions = {s.attributes["processor.partition"] for s in spans if s.attributes and s.name != "step double"}
    assert len(partitions) >= 2, f"the chain crossed partitions: {partitions}"
    by_client = [s for s in EXPORTER.get_finished_spans()
                 if s.name == "a/first" and s.parent is not None and s.parent.span_id in client_span]
    assert by_client, "an invocation by the Client continues the trace of the code that called it"
