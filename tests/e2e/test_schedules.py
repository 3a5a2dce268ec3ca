"""Schedules on the real broker: every tick of a schedule is one invocation, exactly, while instances
are SIGKILLed and restarted; ticks missed while everything was down follow the catch-up policy;
schedules are created, replaced and removed at runtime through the Client. Outputs are read with
read_committed and checked against the ticks the schedule's interval implies."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

import processor as p
from processor._engine import routing
from tests.e2e.conftest import Spawner
from tests.e2e.harness import ProcessorProcess
from tests.kafka_support import Kafka, wait_until

pytestmark = pytest.mark.e2e

APP = "tests.apps.scheduled:app"
EVERY_MS = 1000
MINUTE_MS = 60_000
PARTITIONS = 4


def sched_env(kafka: Kafka, **extra: str) -> tuple[dict[str, str], str]:
    name = kafka.unique("sched")
    out = kafka.create_topic(f"{name}-out", 1)
    return {"SCHED_APP": name, "SCHED_OUTPUT": out, "SCHED_PARTITIONS": str(PARTITIONS), **extra}, out


def names_on_every_partition(prefix: str, per: int) -> list[str]:
    """Schedule names, `per` on each partition: every instance runs some, whichever it owns."""
    names: list[str] = []
    counts: Counter[int] = Counter()
    i = 0
    while len(names) < per * PARTITIONS:
        n, i = f"{prefix}{i}", i + 1
        if counts[q := routing.target_partition(n, "", PARTITIONS)] < per:
            counts[q] += 1
            names.append(n)
    return names


def outputs(kafka: Kafka, out: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value or b"") for r in kafka.drain(out)]


def ticks_by_schedule(kafka: Kafka, out: str) -> dict[str, list[int]]:
    by: dict[str, list[int]] = defaultdict(list)
    for o in outputs(kafka, out):
        by[o["schedule"]].append(o["at_ms"])
    return by


def runs(ticks: list[int], step: int = EVERY_MS) -> list[tuple[int, int]]:
    """The stretches of consecutive ticks, as (first, last)."""
    s = sorted(ticks)
    out = [(s[0], s[0])]
    for t in s[1:]:
        out[-1:] = [(out[-1][0], t)] if t == out[-1][1] + step else [out[-1], (t, t)]
    return out


def assert_each_tick_once(name: str, ticks: list[int], step: int = EVERY_MS) -> None:
    dups = sorted(t for t, n in Counter(ticks).items() if n > 1)
    assert not dups, f"{name}: ticks fired more than once: {dups}"
    assert len(runs(ticks, step)) == 1, f"{name}: gaps between {runs(ticks, step)}"


def now_ms() -> int:
    return int(time.time() * 1000)


def test_each_tick_is_one_invocation_while_two_of_three_instances_are_sigkilled(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    """Interval schedules (every second) and cron schedules (every minute, Europe/Berlin), some on each
    partition; two of three instances are SIGKILLed just before a minute's tick, kept down past the
    session timeout (their partitions move to the survivor) and restarted (they move back)."""
    names = names_on_every_partition("s", 2)
    crons = names_on_every_partition("c", 1)
    env, out = sched_env(kafka, SCHED_NAMES=",".join(names), SCHED_CRON_NAMES=",".join(crons))
    t0 = now_ms()
    procs = [spawn(APP, env, instance_id=f"i{k}", state_dir=tmp_path / f"state{k}") for k in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.wait_ready()

    def past(schedules: list[str], ms: int) -> bool:
        by = ticks_by_schedule(kafka, out)
        return all(by.get(n) and max(by[n]) >= ms for n in schedules)
    wait_until(lambda: past(names, t0 + 3 * EVERY_MS), 90, "every interval schedule ticking")

    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    print(f"chaos seed {seed}")
    victims: list[ProcessorProcess] = rng.sample(procs, 2)
    minute = (now_ms() // MINUTE_MS + 1) * MINUTE_MS  # the tick the victims' crons miss
    time.sleep(max(0.0, (minute - now_ms()) / 1000 - rng.uniform(1.5, 3.5)))
    victims[0].kill()
    time.sleep(rng.uniform(0.2, 1))
    victims[1].kill()
    killed = now_ms()
    # the survivor takes their partitions after the session timeout (6 s) and carries on their ticks
    wait_until(lambda: past(names, killed + 8_000) and past(crons, minute), 90, "the survivor to run them all")
    for proc in victims:
        proc.start()
    for proc in victims:
        proc.wait_ready()
    end = now_ms() + 5_000
    wait_until(lambda: past(names, end) and past(crons, minute + MINUTE_MS), 150,
               "every schedule ticking after the restarts, the crons a minute on")
    for proc in procs:
        assert proc.stop() == 0

    by = ticks_by_schedule(kafka, out)
    assert sorted(by) == sorted(names + crons)
    for n in names:
        assert_each_tick_once(n, by[n])
        assert min(by[n]) - t0 < 60_000, f"{n}: the first tick came late"
        assert max(by[n]) >= end
    for n in crons:
        assert_each_tick_once(n, by[n], MINUTE_MS)
        assert minute in by[n] and minute + MINUTE_MS in by[n]
    ids = [o["id"] for o in outputs(kafka, out)]
    assert len(ids) == len(set(ids)), "every tick is an invocation of its own"
    print(f"{sum(map(len, by.values()))} ticks of {len(by)} schedules, each once")


def test_ticks_missed_while_everything_was_down_fire_once_for_the_latest(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    grace_s, down_s = 3, 12
    env, out = sched_env(kafka, SCHED_NAMES="late", SCHED_GRACE=str(grace_s), SCHED_CATCH_UP="latest")
    proc = spawn(APP, env).start().wait_ready()
    wait_until(lambda: len(ticks_by_schedule(kafka, out)["late"]) >= 3, 60, "three ticks")
    proc.kill()
    killed = now_ms()
    time.sleep(down_s)  # everything down for longer than the grace: ticks are missed
    proc.start().wait_ready()
    restarted = now_ms()
    wait_until(lambda: max(ticks_by_schedule(kafka, out)["late"]) >= restarted + 3_000, 60, "ticks after restart")
    assert proc.stop() == 0

    ticks = ticks_by_schedule(kafka, out)["late"]
    assert len(ticks) == len(set(ticks)), "no tick fired twice"
    before, after = runs(ticks)  # one stretch before the outage, one after: the missed ones coalesced
    missing = (after[0] - before[1]) // EVERY_MS - 1
    assert before[1] < killed <= after[0] - (down_s - grace_s - 2) * EVERY_MS
    said = [int(n) for n in re.findall(r"schedule 'late': skipped (\d+) missed tick", proc.log())]
    assert said == [missing], f"the log says it skipped {said}, the outputs miss {missing}"
    assert missing >= down_s - grace_s - 2


def test_schedules_are_created_replaced_and_removed_at_runtime(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    env, out = sched_env(kafka)
    proc = spawn(APP, env).start().wait_ready()

    def ticks_of(payload: dict[str, Any]) -> list[int]:
        return [o["at_ms"] for o in outputs(kafka, out) if o["schedule"] == "rt" and o["payload"] == payload]

    async def scenario() -> int:
        async with p.Client(kafka.bootstrap, env["SCHED_APP"]) as client:
            every = timedelta(milliseconds=EVERY_MS)
            first = await client.schedule("rt", "ticks/record", {"v": 1}, every=every)
            assert first.tzinfo is not None and abs(first.timestamp() * 1000 - now_ms()) < 5_000
            # the same definition again leaves the running schedule alone (a second chain would
            # fire its ticks twice: checked below)
            await client.schedule("rt", "ticks/record", {"v": 1}, every=every)
            await asyncio.to_thread(wait_until, lambda: len(ticks_of({"v": 1})) >= 3, 60, "three ticks of v1")
            await client.schedule("rt", "ticks/record", {"v": 2}, every=every)  # replaced
            await asyncio.to_thread(wait_until, lambda: len(ticks_of({"v": 2})) >= 3, 60, "three ticks of v2")
            assert await client.unschedule("rt") is True
            removed = now_ms()
            assert await client.unschedule("rt") is False
            with pytest.raises(p.TerminalError, match="no handler"):
                await client.schedule("bad", "ticks/nope", every=every)
            with pytest.raises(p.ConfigurationError, match="bad cron"):
                await client.schedule("bad", "ticks/record", cron="not a cron")
            # from inside a handler: one-way, exactly once with the calling invocation
            await client.call("ctl/manage", {"op": "add", "name": "inner"})
            await asyncio.to_thread(wait_until, lambda: len(ticks_of_inner()) >= 3, 60, "three ticks of inner")
            await client.call("ctl/manage", {"op": "remove", "name": "inner"})
            return removed

    def ticks_of_inner() -> list[int]:
        return [o["at_ms"] for o in outputs(kafka, out) if o["schedule"] == "inner"]
    removed = asyncio.run(scenario())
    inner_removed = now_ms()
    # the removal is a one-way send: wait until it ran (no new tick for three intervals), bounded
    seen: list[int] = []

    def quiet() -> bool:
        seen.append(len(ticks_of_inner()))
        return len(seen) > 3 * 10 and seen[-1] == seen[-3 * 10]
    wait_until(quiet, 30, "the handler's schedule to stop ticking")
    time.sleep(3 * EVERY_MS / 1000)  # a tick of rt that still fired would be on the topic by now
    assert proc.stop() == 0

    v1, v2 = ticks_of({"v": 1}), ticks_of({"v": 2})
    assert_each_tick_once("rt", v1 + v2)
    assert max(v1) < min(v2), "the replacement took over from the next tick"
    assert max(v2) <= removed, "no tick after the removal"
    inner = ticks_of_inner()
    assert_each_tick_once("inner", inner)
    assert max(inner) <= inner_removed + 2 * EVERY_MS, "the handler's removal stopped it"
