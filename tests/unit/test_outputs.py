"""app.output declarations and KnownTopics: the engine's record of which topics an emit may reach."""

from __future__ import annotations

import threading

import pytest

import processor as p
from processor._engine.kafka import KnownTopics
from tests.kafka_support import wait_until


def test_an_output_is_declared_once_with_a_valid_name_and_count() -> None:
    app = p.App("outs")
    assert app.output("events", partitions=4, config={"retention.ms": "1000"}) == "events"
    assert app.outputs["events"].partitions == 4
    for bad, says in [(lambda: app.output("events"), "declared twice"),
                      (lambda: app.output("bad topic"), "a topic name is 1-249 of"),
                      (lambda: app.output("x", partitions=0), "must be an int >= 1"),
                      (lambda: app.output("y", partitions="4"), "must be an int >= 1"),  # type: ignore[arg-type]
                      (lambda: app.output("z", config={"retention.ms": 1000}), "topic settings to strings"),  # type: ignore[dict-item]
                      (lambda: app.output("outs.dlq"), "internal topic")]:
        with pytest.raises(p.ConfigurationError, match=says):
            bad()


def test_an_unknown_topic_is_looked_up_once_at_a_time_and_known_once_found() -> None:
    exists = threading.Event()
    release = threading.Event()
    calls: list[str] = []

    def lookup(topic: str) -> bool:
        calls.append(topic)
        release.wait(10)
        return exists.is_set()

    topics = KnownTopics(["a"], lookup)
    assert topics.check("a")
    assert not topics.check("b")
    assert not topics.check("b")  # a lookup of b is running: no second one
    release.set()
    wait_until(lambda: "b" not in topics._looking, 10, "the first lookup to end")
    assert calls == ["b"]
    exists.set()  # created meanwhile: the next check looks again and finds it
    assert not topics.check("b")
    wait_until(lambda: topics.check("b"), 10, "b to be found")
    assert calls == ["b", "b"]


def test_lookups_in_flight_are_bounded_and_a_failing_lookup_is_not_fatal() -> None:
    gate = threading.Event()

    def lookup(topic: str) -> bool:
        gate.wait(10)
        raise RuntimeError("broker unreachable")

    topics = KnownTopics([], lookup, max_lookups=2)
    for t in ("a", "b", "c"):
        assert not topics.check(t)
    assert topics._looking == {"a", "b"}
    gate.set()
    wait_until(lambda: not topics._looking, 10, "the lookups to end")
    assert not topics.check("a")
