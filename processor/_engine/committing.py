"""The commit cycle as the engine runs it: when a cycle seals (the linger, the drain, letting a few
running invocations finish), the cycle itself (``cycle.py``'s four steps on a producer's lane and the
apply thread), and what a failed transaction leaves to do. Mixed into ``Engine``; runs on the event
loop (docs/decisions/008-eager-handlers-and-the-drain.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from confluent_kafka import KafkaError, Producer

from processor._app import App
from processor._engine import kafka as kio
from processor._engine import txn
from processor._engine.cycle import Cycle
from processor._engine.health import Health
from processor._engine.lanes import Deadline, Lane, Stuck
from processor._engine.metrics import CommitTimings
from processor._engine.partition import PartitionWorker
from processor.state.changelog import restore
from processor.state.store import PartitionStore, Store

log = logging.getLogger("processor.engine")
T = TypeVar("T")

MAX_LINGER_S = 0.1      # the longest a cycle waits for handlers still making progress before it seals
FINISH_FEW = 64         # a cycle waits for the running invocations to finish when there are at most this many
FENCES_TO_GIVE_UP = 5   # young transactions fenced within the engine's fence window: another instance has our id


class Committing:
    """Mixed into ``Engine``: its commit loop and cycles."""

    app: App
    workers: dict[int, PartitionWorker]
    health: Health
    timings: CommitTimings
    commits: int
    txn_failures: dict[str, int]
    _client: dict[str, Any]
    _stop: asyncio.Event
    _work: asyncio.Event
    _progress: asyncio.Event
    _sealed: asyncio.Event
    _work_done: int
    _draining: bool
    _rebuilding: bool
    _commit_lock: asyncio.Lock
    _producers: list[Producer | None]
    _producer_lanes: list[Lane]
    _producer_fences: deque[float]
    _turn: int
    _group_metadata: object | None
    _stores: dict[int, PartitionStore]
    _apply_pool: ThreadPoolExecutor

    if TYPE_CHECKING:
        @property
        def _txn_s(self) -> float: ...
        def transactional_id(self, slot: int) -> str: ...
        def _check_stall(self) -> bool: ...
        def _cycle_full(self) -> bool: ...
        def _begin_rebuild(self, why: str, *, quiet: bool = False) -> None: ...
        def _lose_producer(self, slot: int) -> None: ...
        def _refuse(self, why: str) -> None: ...
        def _note_fence(self, fences: deque[float], limit: int, why: str) -> None: ...

    async def _commit_loop(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            if self._stop.is_set() and not self._has_work():
                return
            self.health.woke()
            await self._linger()
            try:
                await self.commit_cycle()
            finally:
                self._end_drain()
                self.health.cycle_done()
            if self._stop.is_set() and not self._has_work():
                return

    async def _linger(self) -> None:
        """Before sealing a cycle, let the handlers that can make progress make it, and wait
        (briefly) for step bodies already executing: their results and the invocations queued behind
        them then ride this cycle instead of the next one, and an invocation that finishes here
        writes nothing of itself (docs/decisions/006-what-a-cycle-writes.md). Stops when a loop turn
        makes no progress, the cycle is full, or after MAX_LINGER_S."""
        await self._settle(MAX_LINGER_S, bodies=False)
        # Drain: no new input (neither fetched nor held), so the invocations running now — most of
        # them waiting only for a step's acknowledgement — finish in this cycle instead of being
        # saved by it (and deleted by the next). It waits for the bodies running now, not for the
        # next steps of the invocations they release (those would keep it going to its bound), and
        # ends when the cycle is sealed (``_end_drain``).
        self._draining = True
        for w in self.workers.values():
            w.draining = True
            w.drain_until_ended = w.bodies_ended + w.bodies_running
        linger = self.app.config.commit_linger.total_seconds()
        until = time.monotonic() + linger
        await self._settle(linger, bodies=True)
        if sum(len(w.runtimes) for w in self.workers.values()) <= FINISH_FEW:
            self._end_drain()
            await self._let_few_finish(until)
        # else the drain lasts until the seal: input let in now would start invocations it saves

    async def _let_few_finish(self, until: float) -> None:
        """When only a few invocations are in memory, let those running (not waiting on a durable
        wait) finish in this cycle, until `until` at most, with input flowing again: one taking a
        string of steps (each released on its acknowledgement) then commits once, when it is done,
        instead of being saved by a cycle mid-way — whose commit its finish would then wait behind
        (the tail latency of a handler run one at a time). Many in memory means a busy partition:
        cycles go as they are."""
        running = [(w, rt) for w in self.workers.values() for rt in w.runtimes.values() if not rt.waits.pending]
        while running and not self._cycle_full():
            left = until - time.monotonic()
            if left <= 0:
                return
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), left)
            except TimeoutError:
                return
            running = [(w, rt) for w, rt in running
                       if w.runtimes.get(rt.invocation_id) is rt and not rt.waits.pending]

    def _end_drain(self) -> None:
        if not self._draining:
            return
        self._draining = False
        for w in list(self.workers.values()):
            w.draining = False
            w.route_held()

    async def _settle(self, seconds: float, *, bodies: bool) -> None:
        """Let the loop run until a few turns make no progress (and, with `bodies`, no step body runs
        or waits for its acknowledgement), the cycle is full, or `seconds` passed."""
        now = time.monotonic()
        until = now + seconds
        quiet_turns = 0
        while now < until and not self._cycle_full():
            before = self._work_done
            await asyncio.sleep(0)
            now = time.monotonic()
            if self._work_done != before:
                quiet_turns = 0
                continue
            quiet_turns += 1  # released handler -> finish -> next invocation -> its first step: a few hops
            if quiet_turns < 6:
                continue
            if bodies and any(w.bodies_ended < w.drain_until_ended for w in self.workers.values()):
                await asyncio.sleep(0.0002)
                continue
            return

    def _has_work(self) -> bool:
        return not self._rebuilding and any(w.has_work() for w in self.workers.values())

    async def commit_cycle(self, partitions: set[int] | None = None, *, deadline: Deadline | None = None) -> bool:
        """Commit everything pending (of `partitions`, default all) in one transaction. False when
        nothing could be committed: the transaction failed (a rebuild is under way) or work must wait."""
        if deadline is None:
            await self._commit_lock.acquire()
        else:
            try:  # a revoke gives up on committing rather than outlive its deadline
                await asyncio.wait_for(self._commit_lock.acquire(), max(0.0, deadline.left() - 1.0))
            except TimeoutError:
                return False
        try:
            return await self._commit_locked(partitions, deadline)
        finally:
            self._commit_lock.release()

    async def _commit_locked(self, partitions: set[int] | None, deadline: Deadline | None) -> bool:
        if self._check_stall():
            return False
        if deadline is not None and deadline.left() < 1.0:
            return False  # too late to commit: the next owner resumes from the last commit
        workers = [w for p, w in self.workers.items() if (partitions is None or p in partitions) and w.has_work()]
        if not workers:
            return True
        slot = self._turn
        producer = self._producers[slot]
        if producer is None:
            self._begin_rebuild("no usable transactional producer")
            return False
        cycle = Cycle.seal(workers, self.app.inbox_topic)  # 1
        self._end_drain()
        self._sealed.set()
        group = self._group_metadata
        timeout = self._txn_s if deadline is None else min(self._txn_s, deadline.left())
        started = time.perf_counter()
        try:  # 2
            written = await self._producer_lanes[slot].call(
                lambda: cycle.transact(producer, changelog=self.app.changelog_topic, group=group,
                                       timings=self.timings, flush_timeout=self._txn_s),
                timeout, "a commit cycle's Kafka transaction")
        except Stuck as e:
            self.txn_failures["stuck"] = self.txn_failures.get("stuck", 0) + 1
            # Whatever stuck this call (a broker or coordinator gone) is likely to stick the
            # other producer too: replace them all now rather than find out one deadline later.
            for i in range(len(self._producers)):
                self._lose_producer(i)
            self._begin_rebuild(str(e))
            return False
        except txn.TxnFailed as e:
            await self._settle_failed(slot, e, deadline, age_s=time.perf_counter() - started)
            self._begin_rebuild(f"transaction failed ({e})", quiet=kio.is_refusal(e.code))
            return False
        self._turn = (slot + 1) % len(self._producers)
        stores: dict[int, Store] = {s.partition: self._stores[s.partition] for s in cycle.slices}
        try:  # 3
            foreign = await _uncancellable(asyncio.get_running_loop().run_in_executor(
                self._apply_pool, partial(cycle.apply, written, stores, gap_allowed=len(self._producers),
                                          read_tail=self._read_tail)))
        except Exception as e:
            log.exception("applying a committed cycle to LMDB failed")
            self._begin_rebuild(f"apply failed ({e})")
            return False
        self.timings.add("cycle", time.perf_counter() - started)
        self.commits += 1
        cycle.release(self.workers)  # 4
        if foreign:
            self._begin_rebuild(f"changelog partitions {sorted(foreign)} hold records this instance did not "
                                "write after its store's offset")
        return True

    def _read_tail(self, store: Store, partition: int) -> int:
        """On the apply thread: bring `store` up to the changelog's end; how many records it read."""
        stats = restore(store, consumer_config=self._client, topic=self.app.changelog_topic,
                        partition=partition, deadline_s=60)
        return stats.records

    async def _settle_failed(self, slot: int, e: txn.TxnFailed, deadline: Deadline | None, *,
                             age_s: float, quiet: bool = False) -> None:
        """After a failed transaction: abort it, or give up on the producer."""
        refused = kio.is_refusal(e.code)  # stops the engine, with that one line to say why
        if refused:
            self._refuse(kio.not_authorized(str(e), f"a transaction of {self.transactional_id(slot)}"))
        (log.debug if quiet or refused else log.warning)("transaction on %s failed: %s", self.transactional_id(slot), e)
        self.txn_failures[e.outcome.value] = self.txn_failures.get(e.outcome.value, 0) + 1
        if e.code in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED) and age_s < 0.8 * self._txn_s:
            # Fenced though the broker cannot have timed it out: another producer with our id started.
            self._note_fence(self._producer_fences, FENCES_TO_GIVE_UP, str(e))
        if e.outcome is txn.Outcome.PRODUCER_LOST:
            self._lose_producer(slot)
            return
        producer = self._producers[slot]
        if producer is None:
            return
        timeout = 10.0 if deadline is None else max(0.1, min(10.0, deadline.left()))
        try:
            await self._producer_lanes[slot].call(partial(txn.abort, producer, timeout), timeout + 1,
                                                  "abort_transaction")
        except (Stuck, txn.TxnFailed) as err:
            log.warning("abort failed (%s); starting a new producer", err)
            self._lose_producer(slot)


async def _uncancellable(fut: asyncio.Future[T]) -> T:
    """Await `fut` to its end even when cancelled meanwhile (then re-raise the cancellation): an
    LMDB apply must not be left running while its caller lets go of the commit lock."""
    cancelled = False
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            if not fut.done():
                cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return fut.result()
