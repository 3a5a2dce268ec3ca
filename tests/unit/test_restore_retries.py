"""Restore and lanes without a broker: retriable errors are retried, deadlines are the engine's own."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from processor._engine.lanes import Lane, Stuck
from processor.state import changelog
from processor.state.changelog import RestoreError


class _Offsets:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _FlakyAdmin:
    """list_offsets answers NOT_LEADER_OR_FOLLOWER (retriable) `failures` times, then the end."""

    calls = 0
    failures = 2

    def __init__(self, _config: Any) -> None:
        pass

    def list_offsets(self, request: dict[Any, Any], **_: Any) -> dict[Any, Future[_Offsets]]:
        type(self).calls += 1
        fut: Future[_Offsets] = Future()
        if type(self).calls <= type(self).failures:
            fut.set_exception(KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION,
                                                        "Not leader for partition", retriable=True)))
        else:
            fut.set_result(_Offsets(0))
        return {next(iter(request)): fut}


def test_log_end_retries_a_not_leader_answer_from_a_just_created_changelog(monkeypatch: pytest.MonkeyPatch) -> None:
    _FlakyAdmin.calls, _FlakyAdmin.failures = 0, 2
    monkeypatch.setattr(changelog, "AdminClient", _FlakyAdmin)
    end = changelog.log_end({"bootstrap.servers": "x"}, "app.changelog", 0, deadline=time.monotonic() + 10)
    assert end == 0
    assert _FlakyAdmin.calls == 3


def test_log_end_gives_up_with_a_restore_error_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    _FlakyAdmin.calls, _FlakyAdmin.failures = 0, 10**6
    monkeypatch.setattr(changelog, "AdminClient", _FlakyAdmin)
    t0 = time.monotonic()
    with pytest.raises(RestoreError, match="cannot read the log end"):
        changelog.log_end({"bootstrap.servers": "x"}, "app.changelog", 0, deadline=time.monotonic() + 1.0)
    assert time.monotonic() - t0 < 5
    assert _FlakyAdmin.calls > 1


def test_a_call_past_its_deadline_abandons_its_lane_and_the_caller_goes_on() -> None:
    forever = threading.Event()
    lane = Lane("test")

    async def main() -> None:
        assert await lane.call(lambda: 7, 1, "a quick call") == 7
        with pytest.raises(Stuck, match=r"a stuck call did not return within 0\.2s"):
            await lane.call(forever.wait, 0.2, "a stuck call")
        assert lane.abandoned
        with pytest.raises(Stuck):
            await lane.call(lambda: 1, 1, "anything after")

    asyncio.run(main())
    forever.set()


def test_an_abandoned_call_that_fails_later_leaves_no_unretrieved_error(caplog: pytest.LogCaptureFixture) -> None:
    """A stuck librdkafka call often returns once its client is fenced (with an error): that is expected
    and must not log asyncio's 'Future exception was never retrieved' traceback at ERROR."""
    release = threading.Event()
    lane = Lane("test")

    def late_failure() -> None:
        release.wait(5)
        raise RuntimeError("fenced by a newer instance")

    async def main() -> None:
        with pytest.raises(Stuck):
            await lane.call(late_failure, 0.1, "a late call")
        release.set()
        await asyncio.sleep(0.2)

    asyncio.run(main())
    gc.collect()
    assert "never retrieved" not in caplog.text
