"""Per-handler limits (decision 014): concurrency per partition or per key, and a rate per partition,
enforced by queues in the store; on the testing kit (the engine's partition workers over in-memory
stores, on a clock the test moves)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import processor as p
from processor._engine.limits import take_token
from processor.state import keys
from processor.testing import TestRuntime

SECOND = timedelta(seconds=1)


def _overlap(marks: list[list[Any]]) -> int:
    """The most invocations between their ("start", n) and ("end", n) marks at once."""
    running: set[int] = set()
    most = 0
    for what, n, *_ in marks:
        if what == "start":
            running.add(n)
            most = max(most, len(running))
        else:
            running.discard(n)
    return most


def _service_app(concurrency: int | None = None, rate: p.Rate | None = None, partitions: int = 1) -> p.App:
    app = p.App("lim", partitions=partitions)
    jobs = app.service("jobs")

    @jobs.handler(concurrency=concurrency, rate=rate)
    async def work(ctx: p.Context, n: int) -> float:
        started = await ctx.time()
        ctx.emit("marks", ["start", n, started])
        await ctx.sleep(10 * SECOND)  # lasts a while: the test's clock decides when it ends
        ctx.emit("marks", ["end", n])
        return started
    return app


def test_a_service_handler_runs_at_most_its_concurrency_and_the_rest_wait_queued_in_order() -> None:
    with TestRuntime(_service_app(concurrency=2)) as rt:
        ids = [rt.submit("jobs/work", n) for n in range(5)]
        assert [rt.status(i) for i in ids] == ["running", "running", "queued", "queued", "queued"]
        assert rt.paused_reason(ids[2]) == "waiting for a concurrency slot of jobs/work: 2 running per partition"
        for _ in range(3):
            rt.advance(10 * SECOND)
        marks = rt.emitted("marks")
        assert _overlap(marks) == 2
        assert [n for what, n, *_ in marks if what == "start"] == [0, 1, 2, 3, 4]  # arrival order
        assert all(rt.status(i) == "completed" for i in ids)
        assert not [k for k, _ in rt._workers[0].state.scan(keys.INBOX)]  # every slot row went with its invocation


def test_limits_hold_when_every_commit_is_followed_by_a_restart_from_the_store() -> None:
    """always_replay drops everything in memory after each commit that grew a journal and rebuilds the
    partitions from their stores: the queue, its order and who started come back from committed state."""
    with TestRuntime(_service_app(concurrency=2), always_replay=True) as rt:
        ids = [rt.submit("jobs/work", n) for n in range(6)]
        assert sorted(rt.status(i) for i in ids).count("queued") == 4
        for _ in range(3):
            rt.advance(10 * SECOND)
        marks = rt.emitted("marks")
        assert _overlap(marks) == 2
        assert [n for what, n, *_ in marks if what == "start"] == list(range(6))
        assert len(marks) == 12  # each mark once: replays do not emit again


def test_a_deploy_mid_queue_keeps_the_queue_and_the_started_ones() -> None:
    app = _service_app(concurrency=1)
    with TestRuntime(app) as rt:
        ids = [rt.submit("jobs/work", n) for n in range(3)]
        rt.deploy(_service_app(concurrency=1))  # every partition rebuilt from its store
        assert [rt.status(i) for i in ids] == ["running", "queued", "queued"]
        for _ in range(3):
            rt.advance(10 * SECOND)
        assert _overlap(rt.emitted("marks")) == 1
        assert [rt.result(i) for i in ids] == sorted(rt.result(i) for i in ids)


def _shared_app(per_key: int) -> p.App:
    app = p.App("lim", partitions=1)
    docs = app.virtual_object("docs")

    @docs.handler(shared=True, concurrency_per_key=per_key)
    async def render(ctx: p.ObjectSharedContext, n: int) -> None:
        ctx.emit("marks", ["start", n, ctx.key])
        await ctx.sleep(10 * SECOND)
        ctx.emit("marks", ["end", n, ctx.key])
    return app


def test_a_shared_handler_runs_at_most_its_concurrency_per_key_and_keys_do_not_wait_for_each_other() -> None:
    with TestRuntime(_shared_app(per_key=2)) as rt:
        a = [rt.submit("docs/render", n, key="a") for n in range(4)]
        b = [rt.submit("docs/render", 10 + n, key="b") for n in range(2)]
        assert [rt.status(i) for i in a] == ["running", "running", "queued", "queued"]
        assert [rt.status(i) for i in b] == ["running", "running"]
        assert rt.paused_reason(a[3]) == "waiting for a concurrency slot of docs/render: 2 running per key " \
            "(1 queued ahead)"
        for _ in range(2):
            rt.advance(10 * SECOND)
        marks = rt.emitted("marks")
        for key in ("a", "b"):
            assert _overlap([m for m in marks if m[2] == key]) == 2
        assert all(rt.status(i) == "completed" for i in a + b)


def _rated_app(rate: p.Rate, partitions: int) -> p.App:
    app = p.App("lim", partitions=partitions)
    jobs = app.service("jobs")

    @jobs.handler(rate=rate)
    async def ping(ctx: p.Context, n: int) -> float:
        return await ctx.time()
    return app


def test_a_rate_spaces_starts_by_its_interval_after_its_burst() -> None:
    with TestRuntime(_rated_app(p.Rate(per_second=4, burst=2), partitions=1)) as rt:
        t0 = rt.now.timestamp()
        ids = [rt.submit("jobs/ping", n) for n in range(6)]
        assert [rt.status(i) for i in ids].count("completed") == 2  # the burst
        assert rt.paused_reason(ids[2]) == ("waiting for the rate of jobs/ping: 4/s over the app, 4/s on each "
                                            "of 1 partitions")
        rt.advance(2 * SECOND)
        starts = [rt.result(i) - t0 for i in ids]
        assert starts == pytest.approx([0, 0, 0.25, 0.5, 0.75, 1.0])


def test_a_rate_is_split_over_the_partitions() -> None:
    with TestRuntime(_rated_app(p.Rate(per_second=8, burst=4), partitions=4)) as rt:
        t0 = rt.now.timestamp()
        ids = [rt.submit("jobs/ping", n, idempotency_key=str(n)) for n in range(40)]
        rt.advance(10 * SECOND)
        starts = sorted(rt.result(i) - t0 for i in ids)
        # 2/s on each of 4 partitions, a bucket of 1 each: at most 4 starts in any half second
        assert all(starts[k + 4] - starts[k] >= 0.5 - 1e-9 for k in range(len(starts) - 4))


def test_the_cell_rate_algorithm() -> None:
    # one start per 100 µs, 3 at once: three go at t=0, the fourth at 100
    tat = 0
    for _ in range(3):
        ok, tat = take_token(tat, 0, 100, 3)
        assert ok
    assert take_token(tat, 0, 100, 3) == (False, 100)
    assert take_token(tat, 100, 100, 3) == (True, 400)
    assert take_token(400, 10_000, 100, 3) == (True, 10_100)  # idle: the bucket is full again, no more


def test_cancelling_or_killing_frees_a_place_and_a_queued_one_leaves_the_queue() -> None:
    with TestRuntime(_service_app(concurrency=1)) as rt:
        ids = [rt.submit("jobs/work", n) for n in range(3)]
        rt.kill(ids[1])  # queued: it leaves the queue
        assert rt.status(ids[1]) == "failed"
        rt.kill(ids[0])  # running: its place goes to the next
        assert [rt.status(i) for i in ids] == ["failed", "failed", "running"]
        rt.advance(10 * SECOND)
        assert rt.status(ids[2]) == "completed"


def test_limits_are_checked_where_the_handler_is_declared() -> None:
    app = p.App("lim")
    svc, obj = app.service("s"), app.virtual_object("o")
    with pytest.raises(p.ConfigurationError, match="concurrency=0 must be an int >= 1"):
        svc.handler(concurrency=0)
    with pytest.raises(p.ConfigurationError, match=r"rate=5 must be a p\.Rate"):
        svc.handler(rate=5)  # type: ignore[arg-type]
    with pytest.raises(p.ConfigurationError, match="exclusive handler runs one invocation per key already"):
        obj.handler(concurrency=2)
    with pytest.raises(p.ConfigurationError, match="cannot be combined"):
        obj.handler(shared=True, concurrency_per_key=2, rate=p.Rate(per_second=1))
    with pytest.raises(p.ConfigurationError, match="per_second"):
        p.Rate(per_second=0)
    with pytest.raises(p.ConfigurationError, match="burst"):
        p.Rate(per_second=1, burst=0)
    assert p.Rate(per_second=20).per_partition(4) == (200_000, 5)
    assert p.Rate(per_second=1, burst=1).per_partition(4) == (4_000_000, 1)


def test_a_rate_s_bucket_is_committed_state_so_a_restart_grants_no_second_burst() -> None:
    with TestRuntime(_rated_app(p.Rate(per_second=4, burst=2), partitions=1)) as rt:
        t0 = rt.now.timestamp()
        ids = [rt.submit("jobs/ping", n) for n in range(4)]
        rt.deploy(_rated_app(p.Rate(per_second=4, burst=2), partitions=1))  # rebuilt from the store
        assert [rt.status(i) for i in ids] == ["completed", "completed", "queued", "queued"]
        rt.advance(SECOND)
        assert [rt.result(i) - t0 for i in ids] == pytest.approx([0, 0, 0.25, 0.5])


def test_concurrency_and_rate_together_on_a_shared_handler_across_its_keys() -> None:
    app = p.App("lim", partitions=1)
    docs = app.virtual_object("docs")

    @docs.handler(shared=True, concurrency=2, rate=p.Rate(per_second=10, burst=10))
    async def render(ctx: p.ObjectSharedContext, n: int) -> None:
        ctx.emit("marks", ["start", n, await ctx.time()])
        await ctx.sleep(SECOND)
        ctx.emit("marks", ["end", n])

    with TestRuntime(app) as rt:
        t0 = rt.now.timestamp()
        ids = [rt.submit("docs/render", n, key=f"k{n}") for n in range(6)]  # one partition: keys share it
        assert [rt.status(i) for i in ids].count("queued") == 4
        rt.advance(5 * SECOND)
        marks = rt.emitted("marks")
        assert _overlap(marks) == 2
        assert [m[2] - t0 for m in marks if m[0] == "start"] == pytest.approx([0, 0, 1, 1, 2, 2])


def test_a_deploy_that_removes_the_limit_starts_what_its_queue_held() -> None:
    with TestRuntime(_service_app(concurrency=1)) as rt:
        ids = [rt.submit("jobs/work", n) for n in range(3)]
        rt.deploy(_service_app())
        assert [rt.status(i) for i in ids] == ["running"] * 3
        rt.advance(10 * SECOND)
        assert [rt.status(i) for i in ids] == ["completed"] * 3
        rt.submit("jobs/work", 3)  # and new ones start at once
        assert len(rt.emitted("marks")) == 7
        rt.deploy(_service_app())  # the old queue's slot rows went with their invocations: nothing resumes
        assert len(rt.emitted("marks")) == 7
        assert not [k for k, _ in rt._workers[0].state.scan(keys.INBOX)]


def test_a_deploy_without_the_handler_fails_what_its_queue_held() -> None:
    with TestRuntime(_service_app(concurrency=1)) as rt:
        ids = [rt.submit("jobs/work", n) for n in range(3)]
        rt.deploy(p.App("lim", partitions=1))
        assert [rt.status(i) for i in ids] == ["failed"] * 3
        with pytest.raises(p.TerminalError, match="no handler jobs/work in this deploy"):
            rt.result(ids[2])
        assert not [k for k, _ in rt._workers[0].state.scan(keys.INBOX)]
