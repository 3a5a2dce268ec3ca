"""The operator's inbox commands (the admin endpoint's actions), on one partition worker over the
in-memory store: `retry` runs a backing-off invocation now and cancels its retry timer, `purge`
forgets a finished one; either is a no-op where it does not apply."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import processor as p
from processor._engine import routing
from processor._engine.records import Status
from processor.state import keys
from processor.timers import TimerKind, decode_timer
from tests.unit.test_inbox_invoke import Worker


def _app(attempts: list[int]) -> p.App:
    # named as the harness expects; the invocation retry waits a minute: only `retry` runs it again here
    app = p.App("inv", partitions=1, invocation_retry=p.RetryPolicy(initial_interval=timedelta(minutes=1)))
    svc = app.service("svc")

    @svc.handler()
    async def flaky(ctx: p.Context, arg: Any) -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            raise ConnectionError("first attempt fails")
        return "ok"
    return app


INV = routing.invocation_id(0, "client", "svc/flaky", "", "seed")


def _timer_kinds(w: Worker) -> list[TimerKind]:
    return [decode_timer(v)[0] for _, v in w.w.state.scan(keys.TIMER)]


def test_retry_runs_a_backing_off_invocation_now_and_purge_forgets_it_once_finished() -> None:
    attempts: list[int] = []

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            w = Worker(_app(attempts), pool)
            w.send("invoke", invocation_id=INV, service="svc", handler="flaky", payload=b"{}", notify=True)
            await w.commit()
            [row] = w.rows()
            assert row.status is Status.BACKING_OFF and attempts == [1]
            assert _timer_kinds(w) == [TimerKind.INVOCATION_RETRY]

            w.send("purge", invocation_id=INV)  # not finished: nothing to purge
            await w.commit()
            assert [r.status for r in w.rows()] == [Status.BACKING_OFF]

            w.send("retry", invocation_id=INV)
            await w.commit()
            [row] = w.rows()
            assert row.status is Status.COMPLETED and attempts == [1, 2]
            assert [(r["invocation_id"], r["status"]) for r in w.results] == [(INV, "completed")]
            assert _timer_kinds(w) == [TimerKind.PURGE], "the retry timer went with the retry"

            w.send("retry", invocation_id=INV)  # finished: nothing to retry
            await w.commit()
            assert attempts == [1, 2]

            w.send("purge", invocation_id=INV)
            await w.commit()
            assert w.rows() == [] and list(w.w.state.scan(keys.journal_prefix(INV))) == []
            assert w.dlq == 0
    asyncio.run(main())
