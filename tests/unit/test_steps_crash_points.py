"""Crash points of the steps chain (decision 007), explored over plain lists.

Step results are released to a handler on the steps log's acknowledgement, before the cycle that
journals them commits. The claim to prove: no handler ever sees a step result that a later replay
contradicts — whatever the moment an owner of the partition dies or freezes, and also when a
frozen owner wakes up as a zombie after its partition moved and writes step records of its own
between the new owner's.

The world is lists: the steps log is a list of records whose acknowledgements the test hands out,
the changelog a store that committed cycles are applied to, the input topic a list of records.
Each owner restores from them (a copy of the committed store, the steps log adopted by
``steps.salvage``) and runs the real partition worker; the test decides, action by action, when
its loop turns, its step records are acknowledged and its cycles commit. A step body draws a new
number every time it runs, so a value seen by one attempt and contradicted by another is caught.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

import processor as p
from processor._engine import steps
from processor._engine.core import Entry
from processor._engine.partition import PartitionWorker, meta_int
from processor._engine.records import InRecord, OutRecord
from processor._engine.steps import Logged
from state import keys
from state.memory import MemoryStore

STEPS = 3
KEYS = ("a", "b")
INPUT = [InRecord(topic="in", partition=0, offset=i, key=k.encode(), value=orjson.dumps({"n": i}))
         for i, k in enumerate(KEYS)]
# One owner's loop, repeated: its step records are produced after a loop turn, acknowledged later,
# and a cycle commits now and then. A zombie goes on the same way, but its commit comes last (the
# linger before a commit is longer than an acknowledgement takes: it may see several steps first).
PATTERN = ("turn", "flush", "ack", "turn", "flush", "commit")
ZOMBIE = ("turn", "flush", "ack") * 4 + ("commit",)
TAKEOVER_S = 10.0  # a frozen owner's partition moves only after its session expired: its clock jumped this far
DRAWS = itertools.count(1)

Seen = list[tuple[int, str, int, int]]  # (owner, key, step, value) for every step result a handler saw


def _app(owner: int, seen: Seen) -> p.App:
    app = p.App("chain", partitions=1)
    acct = app.virtual_object("acct")

    async def draw() -> int:
        return next(DRAWS)  # a different value on every run of any body

    @acct.handler()
    async def chain(ctx: p.ObjectContext, ev: dict[str, Any]) -> None:
        values = []
        for i in range(STEPS):
            value = await ctx.run(f"draw{i}", draw)
            seen.append((owner, ctx.key, i, value))
            values.append(value)
        ctx.set("runs", (await ctx.get("runs") or 0) + 1)
        ctx.emit("out", {"values": values}, key=ctx.key)

    app.subscribe("in", chain)
    return app


class World:
    """What survives every owner: the committed changelog, the group's offset, the committed outputs
    and the steps log (a list: a record's offset is its index)."""

    def __init__(self) -> None:
        self.changelog = MemoryStore()
        self.offset = 0
        self.outputs: list[OutRecord] = []
        self.log: list[Logged] = []
        self.owner = 0  # the number of the owner the group gave the partition to: the only one that commits
        self.seen: Seen = []


class Owner:
    """One owner of partition 0: restored from the world, driven one action at a time."""

    def __init__(self, world: World, number: int, pool: ThreadPoolExecutor) -> None:
        self.world, self.number = world, number
        world.owner = number
        self.now = 1000.0 * number
        self.outbox: list[tuple[Logged, Callable[[int | None], None]]] = []  # written, not produced yet
        self.acks: list[tuple[Callable[[int | None], None], int]] = []  # produced, not acknowledged yet
        self.dead = False
        self.store = MemoryStore()
        self.store.apply(list(world.changelog.scan(b"")), world.changelog.changelog_offset())
        committed_gen = meta_int(self.store.get, "steps-gen")
        start, end = meta_int(self.store.get, "steps-from"), len(world.log)
        salvaged = steps.salvage(committed_gen, world.log[start:end], end, self.write_now)
        self.app = _app(number, world.seen)
        self.w = PartitionWorker(app=self.app, partition=0, partitions_total=1, store=self.store,
                                 step_executor=pool, on_work=lambda: None, steps=self, clock=lambda: self.now)
        self.w.set_committed({"in": world.offset})
        self.w.load(salvaged)
        for record in INPUT[world.offset:]:
            self.w.on_input(record, self.app.bindings["in"])

    # -- the steps log, as the worker's StepSink --------------------------------------------------

    def write(self, partition: int, invocation_id: str, gen: int, entry: Entry,
              on_acked: Callable[[int | None], None]) -> None:
        self.outbox.append((Logged(offset=-1, gen=gen, invocation_id=invocation_id, entry=entry), on_acked))

    def write_now(self, copies: list[tuple[str, int, Entry]]) -> list[int]:
        first = len(self.world.log)
        self.world.log += (Logged(offset=first + i, gen=gen, invocation_id=inv, entry=e)
                           for i, (inv, gen, e) in enumerate(copies))
        return list(range(first, len(self.world.log)))

    # -- actions ----------------------------------------------------------------------------------

    async def act(self, action: str) -> None:
        if self.dead:
            return
        if action == "flush":
            outbox, self.outbox = self.outbox, []
            for record, on_acked in outbox:
                self.acks.append((on_acked, len(self.world.log)))
                self.world.log.append(Logged(offset=len(self.world.log), gen=record.gen,
                                             invocation_id=record.invocation_id, entry=record.entry))
        elif action == "ack":
            acks, self.acks = self.acks, []
            for on_acked, offset in acks:
                on_acked(offset)
        elif action == "commit":
            self._commit()
        for _ in range(10):
            await asyncio.sleep(0)
        self.now += 0.01

    def _commit(self) -> None:
        s = self.w.seal()
        if self.world.owner != self.number:  # fenced: the transaction fails, the instance drops the partition
            self.w.discard()
            self.dead = True
            return
        writes = list(s.overlay.items())
        for store in (self.world.changelog, self.store):
            store.apply(writes, store.changelog_offset() + len(writes))
        self.world.offset = s.offsets.get("in", self.world.offset)
        self.world.outputs += s.outputs
        self.w.committed(s)

    def done(self) -> bool:
        return self.world.offset == len(INPUT) and not self.w.runtimes and not self.w.has_work()

    async def run(self, actions: int | None, pattern: tuple[str, ...] = PATTERN) -> int:
        """Up to `actions` actions (None: until everything is committed). Returns how many it took."""
        for n, action in enumerate(itertools.cycle(pattern)):
            if (actions is not None and n >= actions) or (actions is None and self.done()):
                return n
            assert n < 400, "the owner made no progress"
            await self.act(action)
        raise AssertionError("unreachable")

    def freeze(self) -> None:
        """Stopped (SIGSTOP): nothing runs until it wakes; meanwhile its session expires."""
        self.now += TAKEOVER_S

    def stop(self) -> None:
        self.w.discard()
        self.dead = True


def _scenario(a: int, b: int | None, zombie: bool) -> World:
    """Owner 1 runs `a` actions and freezes; owner 2 takes over and runs `b` actions (None: to the
    end); the frozen owner 1 wakes (if `zombie`) and goes on as if it still owned the partition
    until its commit is fenced; owner 2 then dies (if it stopped early) and owner 3 finishes."""
    world = World()

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            first = Owner(world, 1, pool)
            await first.run(a)
            first.freeze()
            second = Owner(world, 2, pool)
            await second.run(b)
            if zombie:
                await first.run(len(ZOMBIE), ZOMBIE)
            first.stop()
            if b is not None:
                second.stop()
                third = Owner(world, 3, pool)
                await third.run(None)
                third.stop()
            else:
                second.stop()
    asyncio.run(main())
    return world


def _check(world: World) -> None:
    assert world.offset == len(INPUT)
    outputs = {o.key: orjson.loads(o.value or b"")["values"] for o in world.outputs}
    assert len(world.outputs) == len(KEYS), "one output per input record, exactly once"
    for owner, key, step, value in world.seen:
        assert outputs[key.encode()][step] == value, (
            f"owner {owner}'s handler of key {key} saw {value} at step {step}; "
            f"the committed run saw {outputs[key.encode()][step]}")
    for key in KEYS:
        state = world.changelog.get(_state_key(key))
        assert state is not None and orjson.loads(state) == 1


def _state_key(key: str) -> bytes:
    return keys.state_key_under(keys.state_prefix("acct", key), "runs")


def _full_run() -> tuple[World, int]:
    """One owner from the first record to the last commit: the world and how many actions it took."""
    world = World()

    async def main() -> int:
        with ThreadPoolExecutor(1) as pool:
            owner = Owner(world, 1, pool)
            n = await owner.run(None)
            owner.stop()
            return n
    n = asyncio.run(main())
    _check(world)
    return world, n


FULL = _full_run()[1]


@pytest.mark.parametrize("a", range(FULL + 1))
def test_no_handler_sees_a_step_result_that_a_replay_contradicts_wherever_the_owner_dies(a: int) -> None:
    for b in [*range(FULL + 1), None]:
        _check(_scenario(a, b, zombie=False))


@pytest.mark.parametrize("a", range(FULL + 1))
def test_a_zombie_that_wakes_after_its_partition_moved_sees_no_step_result_the_new_owner_contradicts(a: int) -> None:
    for b in [*range(FULL + 1), None]:
        _check(_scenario(a, b, zombie=True))


def test_the_exploration_covers_steps_released_on_acknowledgement() -> None:
    """The crash points above matter only if steps are released on acknowledgement in a full run
    (not only after commits): the full run's steps log holds every step of every key."""
    world, _ = _full_run()
    assert FULL >= 8
    assert len(world.log) >= len(KEYS) * (STEPS - 1)


def test_a_step_after_a_fresh_state_read_rides_the_commit_not_the_steps_log() -> None:
    """What an exclusive handler reads depends on the order its key's invocations ran in, which
    another owner need not repeat: a step computed from a fresh read must not be adopted from the
    steps log (decision 007, "Known hole"), so it is made durable by the commit with its state."""
    world = World()
    app = p.App("reads", partitions=1)
    acct = app.virtual_object("acct")
    released: list[int] = []

    async def plus_one(n: int) -> int:
        return n + 1

    @acct.handler()
    async def count(ctx: p.ObjectContext, ev: dict[str, Any]) -> None:
        n = await ctx.run("next", plus_one, await ctx.get("n") or 0)
        released.append(n)
        ctx.set("n", n)

    app.subscribe("in", count)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            owner = Owner(world, 1, pool)
            owner.app = app
            owner.w = PartitionWorker(app=app, partition=0, partitions_total=1, store=owner.store,
                                      step_executor=pool, on_work=lambda: None, steps=owner, clock=lambda: owner.now)
            owner.w.set_committed({"in": 0})
            owner.w.load(steps.salvage(0, [], 0, owner.write_now))
            await owner.act("commit")  # the generation commits: steps may go to the log from now on
            owner.w.on_input(INPUT[0], app.bindings["in"])
            await owner.act("turn")
            await owner.act("flush")
            assert not owner.outbox and not world.log, "no step record: it waits for the commit"
            assert released == []
            await owner.act("commit")
            assert released == [1]
            owner.stop()
    asyncio.run(main())
