"""librdkafka's lines through Python logging, rate-limited; the JSON log format."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from processor._logs import JsonFormatter, KafkaLog, RateLimiter

FAIL = ("[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: "
        "Connection refused (after {ms}ms in state CONNECT)")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limiter_lets_one_event_per_key_through_per_interval_and_counts_the_rest() -> None:
    clock = Clock()
    limiter = RateLimiter(30.0, clock=clock)
    assert limiter.admit("a") == 0
    assert [limiter.admit("a") for _ in range(5)] == [None] * 5
    assert limiter.admit("b") == 0  # another key has its own interval
    clock.now += 29.9
    assert limiter.admit("a") is None
    clock.now += 0.1
    assert limiter.admit("a") == 6  # passes again, saying how many were held back
    assert limiter.admit("a") is None
    assert limiter.suppressed == 7


def test_the_limiter_forgets_old_keys_to_stay_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, clock=clock, max_keys=4)
    for k in range(4):
        assert limiter.admit(k) == 0
    clock.now += 2
    assert limiter.admit("new") == 0
    assert len(limiter._keys) == 1
    for k in range(10):  # none expired: the oldest half goes
        limiter.admit(f"k{k}")
    assert len(limiter._keys) <= 4


def _kafka_log(clock: Clock) -> tuple[KafkaLog, logging.Logger]:
    logger = logging.getLogger("test.librdkafka")
    logger.setLevel(logging.DEBUG)
    return KafkaLog(logger, interval_s=30.0, clock=clock), logger


def test_a_broker_that_is_down_gives_one_line_per_interval_from_all_clients(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    klog, _ = _kafka_log(clock)
    with caplog.at_level(logging.DEBUG, logger="test.librdkafka"):
        for i in range(300):  # what 3 s of a dead broker looked like, from several clients
            klog.log(logging.ERROR, "%s [%s] %s", "FAIL", f"rdkafka#producer-{i % 5}", FAIL.format(ms=i % 7))
            clock.now += 0.01
        clock.now += 30
        klog.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-9", FAIL.format(ms=3))
    lines = [r for r in caplog.records if r.name == "test.librdkafka"]
    assert len(lines) == 2
    first, second = lines
    assert first.levelno == logging.ERROR
    assert first.getMessage() == ("FAIL 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused "
                                  "(after 0ms in state CONNECT)")  # no thread prefix
    assert first.kafka_client == "rdkafka#producer-0"  # type: ignore[attr-defined]
    assert "(299 more like it in the last 30s not shown)" in second.getMessage()
    assert second.kafka_suppressed == 299  # type: ignore[attr-defined]


def test_different_lines_and_levels_are_limited_separately(caplog: pytest.LogCaptureFixture) -> None:
    klog, _ = _kafka_log(Clock())
    with caplog.at_level(logging.DEBUG, logger="test.librdkafka"):
        klog.log(logging.WARNING, "%s [%s] %s", "FAIL", "c", "broker down")
        klog.log(logging.ERROR, "%s [%s] %s", "FAIL", "c", "broker down")
        klog.log(logging.ERROR, "%s [%s] %s", "ERROR", "c", "broker down")
        klog.log(logging.ERROR, "%s [%s] %s", "ERROR", "c", "1/1 brokers are down")
    assert len(caplog.records) == 4


def test_debug_lines_all_pass_and_disabled_levels_cost_nothing(caplog: pytest.LogCaptureFixture) -> None:
    klog, logger = _kafka_log(Clock())
    with caplog.at_level(logging.DEBUG, logger="test.librdkafka"):
        for _ in range(20):
            klog.log(logging.DEBUG, "%s [%s] %s", "BROKER", "c", "same debug line")
    assert len(caplog.records) == 20
    logger.setLevel(logging.ERROR)
    klog.log(logging.WARNING, "%s [%s] %s", "FAIL", "c", "not shown")
    assert klog.limiter.suppressed == 0  # a disabled line is not counted as held back


def test_the_json_formatter_writes_one_object_per_line_with_context_and_extras() -> None:
    context = {"app": "shop"}
    fmt = JsonFormatter(context)
    rec = logging.LogRecord("processor.engine", logging.WARNING, __file__, 1, "partition %d: %s", (3, 'a "b"\nc'),
                            None)
    rec.kafka_facility = "FAIL"
    context["instance"] = "i-1"  # filled in later: read per record
    line = fmt.format(rec)
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "WARNING" and out["logger"] == "processor.engine"
    assert out["message"] == 'partition 3: a "b"\nc'
    assert out["app"] == "shop" and out["instance"] == "i-1" and out["kafka_facility"] == "FAIL"
    assert out["time"].endswith("+00:00") and "T" in out["time"]


def test_the_json_formatter_carries_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = json.loads(JsonFormatter().format(rec))
    assert out["message"] == "failed" and "ValueError: boom" in out["exception"]
