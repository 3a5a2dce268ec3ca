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
from dataclasses import replace
from typing import Any

import orjson
import pytest

import processor as p
from processor._engine import steps
from processor._engine.core import Entry
from processor._engine.partition import PartitionWorker, meta_int
from processor._engine.records import InRecord, OutRecord
from processor._engine.steps import Logged
from processor.state import keys
from processor.state.memory import MemoryStore

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
    """What survives every owner: the committed changelog, the group's offsets, the committed outputs
    and the steps log (a list: a record's offset is its index). Also what every owner runs: the app
    and the input, which owner `n` receives in the order `arrival(n, records)` gives."""

    def __init__(self, app: Callable[[int, Seen], p.App] = lambda n, seen: _app(n, seen),
                 inputs: list[InRecord] = INPUT,
                 arrival: Callable[[int, list[InRecord]], list[InRecord]] = lambda n, rs: rs,
                 pattern: tuple[str, ...] = PATTERN) -> None:
        self.app, self.inputs, self.arrival, self.pattern = app, inputs, arrival, pattern
        self.changelog = MemoryStore()
        self.offsets = {r.topic: 0 for r in inputs}
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
        self.app = world.app(number, world.seen)
        self.w = PartitionWorker(app=self.app, partition=0, partitions_total=1, store=self.store,
                                 step_executor=pool, on_work=lambda: None, steps=self, clock=lambda: self.now)
        self.w.set_committed(dict(world.offsets))
        self.w.load(salvaged)
        self.pending = world.arrival(number, [r for r in world.inputs if r.offset >= world.offsets[r.topic]])
        if "feed" not in world.pattern:
            self.feed()

    def feed(self) -> None:
        pending, self.pending = self.pending, []
        for record in pending:
            self.w.on_input(record, self.app.bindings[record.topic])

    # -- the steps log, as the worker's StepSink --------------------------------------------------

    def write(self, partition: int, invocation_id: str, gen: int, entry: Entry, reads: bytes,
              on_acked: Callable[[int | None], None]) -> None:
        self.outbox.append((Logged(offset=-1, gen=gen, invocation_id=invocation_id, entry=entry, reads=reads),
                            on_acked))

    def write_now(self, copies: list[Logged]) -> list[int]:
        first = len(self.world.log)
        self.world.log += (replace(r, offset=first + i) for i, r in enumerate(copies))
        return list(range(first, len(self.world.log)))

    # -- actions ----------------------------------------------------------------------------------

    async def act(self, action: str) -> None:
        if self.dead:
            return
        if action == "flush":
            outbox, self.outbox = self.outbox, []
            for record, on_acked in outbox:
                self.acks.append((on_acked, len(self.world.log)))
                self.world.log.append(replace(record, offset=len(self.world.log)))
        elif action == "ack":
            acks, self.acks = self.acks, []
            for on_acked, offset in acks:
                on_acked(offset)
        elif action == "commit":
            self._commit()
        elif action == "feed":
            self.feed()
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
        self.world.offsets.update(s.offsets)
        self.world.outputs += s.outputs
        self.w.committed(s)

    def done(self) -> bool:
        return self.world.offsets == _ends(self.world.inputs) and not self.w.runtimes and not self.w.has_work()

    async def run(self, actions: int | None, pattern: tuple[str, ...] | None = None) -> int:
        """Up to `actions` actions (None: until everything is committed). Returns how many it took."""
        for n, action in enumerate(itertools.cycle(pattern or self.world.pattern)):
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


def _ends(inputs: list[InRecord]) -> dict[str, int]:
    """The offsets the group holds once every record of `inputs` is processed."""
    ends: dict[str, int] = {}
    for r in inputs:
        ends[r.topic] = max(ends.get(r.topic, 0), r.offset + 1)
    return ends


def _scenario(a: int, b: int | None, zombie: bool, world: World | None = None) -> World:
    """Owner 1 runs `a` actions and freezes; owner 2 takes over and runs `b` actions (None: to the
    end); the frozen owner 1 wakes (if `zombie`) and goes on as if it still owned the partition
    until its commit is fenced; owner 2 then dies (if it stopped early) and owner 3 finishes."""
    world = world or World()

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
    assert world.offsets == _ends(INPUT)
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


def _full_run(world: World | None = None, check: Callable[[World], None] = _check) -> tuple[World, int]:
    """One owner from the first record to the last commit: the world and how many actions it took."""
    world = world or World()

    async def main() -> int:
        with ThreadPoolExecutor(1) as pool:
            owner = Owner(world, 1, pool)
            n = await owner.run(None)
            owner.stop()
            return n
    n = asyncio.run(main())
    check(world)
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


def test_a_step_after_a_state_read_goes_to_the_steps_log_with_the_digest_of_what_was_read() -> None:
    """What an exclusive handler reads depends on the order its key's invocations ran in, which
    another owner need not repeat: its step record says what was read before it (decision 007,
    rule 7), so that a replay that read otherwise runs the step again instead of adopting it."""
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
            assert [(r.entry.seq, r.reads) for r in world.log] == [(1, steps.fold_read(steps.NO_READS, 0, None))]
            assert released == []
            await owner.act("ack")
            assert released == [1], "released on acknowledgement, before any commit"
            owner.stop()
    asyncio.run(main())


# A key fed from two topics: each owner receives them interleaved its own way (as two partitions'
# fetches race), so the key's invocations may run in another order after a takeover. A step computed
# from a state read is then computed from another value: a replay may take a step result from the
# steps log only if its attempt read what the replay read (decision 007, rule 7).
TWO_SOURCES = [InRecord(topic=t, partition=0, offset=o, key=b"a", value=orjson.dumps({"n": o}))
               for t, o in (("in", 0), ("side", 0), ("in", 1))]


def _tally(owner: int, seen: Seen) -> p.App:
    app = p.App("tally", partitions=1)
    tally = app.virtual_object("tally")

    async def plus_one(n: int) -> tuple[int, int]:
        return n + 1, next(DRAWS)  # the draw tells one run of the body from another

    @tally.handler()
    async def count(ctx: p.ObjectContext, ev: dict[str, Any]) -> None:
        read = await ctx.get("n") or 0
        n, draw = await ctx.run("next", plus_one, read)
        src = ctx.invocation_id  # derived from the record: the same on every owner
        seen.append((owner, src, read, draw))
        ctx.set("n", n)
        ctx.emit("out", {"src": src, "read": read, "draw": draw}, key=ctx.key)

    app.subscribe("in", count)
    app.subscribe("side", count)
    return app


def _side_first(owner: int, records: list[InRecord]) -> list[InRecord]:
    return records if owner % 2 else sorted(records, key=lambda r: (r.topic != "side", r.offset))


def _two_sources() -> World:
    """Each owner commits its generation before the input arrives, so every step goes to the steps
    log, and no commit fixes the order of the key's invocations before their steps are released."""
    return World(_tally, TWO_SOURCES, _side_first,
                 ("commit", "feed", "turn", "flush", "ack", "turn", "flush", "ack", "turn", "flush", "ack"))


def _check_tally(world: World) -> None:
    assert world.offsets == _ends(TWO_SOURCES)
    outs = {o["src"]: o for o in (orjson.loads(r.value or b"") for r in world.outputs)}
    assert len(world.outputs) == len(TWO_SOURCES) == len(outs), "one output per input record, exactly once"
    assert sorted(o["read"] for o in outs.values()) == list(range(len(TWO_SOURCES))), "a lost update"
    assert orjson.loads(world.changelog.get(keys.state_key_under(keys.state_prefix("tally", "a"), "n")) or b"") == 3
    for owner, src, read, draw in world.seen:
        committed = outs[src]
        if committed["read"] == read:  # an attempt that read what the committed run read saw its step
            assert committed["draw"] == draw, (
                f"owner {owner}'s handler of {src} read {read} and saw step run {draw}; "
                f"the committed run read the same and took run {committed['draw']}")


FULL_TALLY = _full_run(_two_sources(), _check_tally)[1]


@pytest.mark.parametrize("zombie", [False, True])
@pytest.mark.parametrize("a", range(FULL_TALLY + 1))
def test_a_takeover_that_runs_a_keys_invocations_in_another_order_loses_no_update(a: int, zombie: bool) -> None:
    for b in [*range(FULL_TALLY + 1), None]:
        _check_tally(_scenario(a, b, zombie, _two_sources()))
