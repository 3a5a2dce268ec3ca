"""Which partitions this instance owns: the consumer's rebalance callbacks, restoring a partition's
store from its changelog (and salvaging its steps log) in the background while it stays paused,
activating it with a worker once restored, and releasing it — committing what is pending on a
revoke, dropping it when lost. Mixed into ``Engine``; everything here runs on the event loop except
the callbacks, which run on the consumer lane and hop onto the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from processor._app import App
from processor._engine import faults, steps
from processor._engine import kafka as kio
from processor._engine.lanes import Deadline, Lane, Stuck
from processor._engine.memtrim import Trimmer
from processor._engine.partition import PartitionWorker, meta_int
from processor._engine.stats import PartitionStats
from processor._engine.steps import StepLog
from processor._errors import ProcessorError
from processor.state.changelog import RestoreCancelled, RestoreError, log_end, restore
from processor.state.store import PartitionStore, Store, StoreClosedError, StoreFormatError

log = logging.getLogger("processor.engine")
T = TypeVar("T")


@dataclass(slots=True, eq=False)
class Restore:
    """One partition's restore, from assignment to activation."""

    partition: int
    seek: bool                    # records were fetched and dropped: rewind before resuming
    stop: bool = False
    task: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)
    salvaged: steps.Salvaged | None = None  # what the steps log holds that no committed cycle absorbed
    done: int = 0        # progress as the restore last reported it (the admin endpoint shows it)
    left: int = 0
    rate: float = 0.0


class Ownership:
    """Mixed into ``Engine``: the partitions it is assigned, restoring, active or giving up."""

    app: App
    root: Path
    workers: dict[int, PartitionWorker]
    partitions_total: int
    step_executor: Any
    stats: PartitionStats
    ready: asyncio.Event
    rebalances: dict[str, int]
    _client: dict[str, Any]
    _loop: asyncio.AbstractEventLoop | None
    _error: BaseException | None
    _stores: dict[int, PartitionStore]
    _owned: set[int]
    _restoring: dict[int, Restore]
    _restored: dict[int, Restore]
    _assign_generation: int
    _epoch: int
    _inputs_paused: bool
    _held_paused: set[int]
    _consumer: Consumer | None
    _consumer_lane: Lane
    _consumer_failed: str | None
    _steps: StepLog | None
    _topics: kio.KnownTopics | None
    _step_lease_s: float
    _trimmer: Trimmer
    _rebuilding: bool
    _ticked: float
    _group_metadata: object | None
    _commit_lock: asyncio.Lock

    if TYPE_CHECKING:
        @property
        def input_topics(self) -> list[str]: ...
        @property
        def _txn_s(self) -> float: ...
        def request_stop(self) -> None: ...
        def _on_work(self) -> None: ...
        def _tps(self, partitions: Iterable[int]) -> list[TopicPartition]: ...
        async def commit_cycle(self, partitions: set[int] | None = None, *,
                               deadline: Deadline | None = None) -> bool: ...

    def _hop(self, coro_fn: Callable[[], Any], timeout: float) -> None:
        assert self._loop is not None
        try:
            asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(timeout)
        except BaseException as e:
            self._error = self._error or e
            self._loop.call_soon_threadsafe(self.request_stop)

    def _cb_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances["assigned"] += 1
        self._group_metadata = consumer.consumer_group_metadata()
        # Paused until restored: the other partitions flow meanwhile (restore runs in the background).
        consumer.assign(partitions)
        consumer.pause(partitions)
        self._hop(lambda: self._assigned(partitions), 60)

    def _cb_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances["revoked"] += 1
        deadline = Deadline(self._txn_s + 10)
        self._hop(lambda: self._release({tp.partition for tp in partitions}, commit=True, deadline=deadline),
                  deadline.left() + 10)

    def _cb_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        faults.point("on_lost")
        self.rebalances["lost"] += 1
        deadline = Deadline(self._txn_s + 10)
        self._hop(lambda: self._release({tp.partition for tp in partitions}, commit=False, deadline=deadline),
                  deadline.left() + 10)

    async def _assigned(self, tps: list[TopicPartition]) -> None:
        numbers = kio.check_copartitioned([(tp.topic, tp.partition) for tp in tps], self.input_topics)
        self._assign_generation += 1
        self._epoch += 1
        stale = (set(self.workers) | set(self._restoring) | set(self._restored)) - numbers
        if stale:
            await self._release(stale, commit=False, deadline=Deadline(self._txn_s + 10))
        self._owned = set(numbers)
        self._inputs_paused = False  # a new assignment starts unpaused
        self.ready.clear()
        for p in sorted(numbers):
            if p in self.workers:  # still active from before (never after an eager revoke)
                continue
            r = self._restoring.get(p)
            if (r is None or r.stop) and p not in self._restored:  # a stopped restore still running: a new one
                self._start_restore(p, seek=False)
        log.info("assignment %s: restoring from the changelog", sorted(numbers))

    def _start_restore(self, p: int, *, seek: bool) -> None:
        before = self._restoring.get(p)  # stopped but still running: the new one starts after it ends
        r = Restore(partition=p, seek=seek)
        self._restoring[p] = r
        r.task = asyncio.get_running_loop().create_task(
            self._restore(r, after=before.task if before is not None else None), name=f"restore {p}")

    async def _restore(self, r: Restore, after: asyncio.Task[None] | None = None) -> None:
        """Bring partition `r.partition`'s store to the changelog's end, on a lane of its own; the
        partition stays paused meanwhile. Retries until it succeeds or the partition is released.
        Never two at once on one store: a restore starts after the one it replaces (`after`) ended."""
        p = r.partition
        if after is not None:
            await asyncio.wait([after])
        backoff = 0.5
        while not r.stop:
            try:
                store = self._stores.get(p)
                if store is None:
                    store = self._stores[p] = await asyncio.to_thread(PartitionStore.open, self.root / str(p))
                await self._restore_once(r, store)
                break
            except RestoreCancelled:
                break
            except RestoreError as e:
                log.warning("partition %d: restore failed (%s); retrying in %.1fs", p, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            except (Stuck, StoreFormatError) as e:
                self._error = self._error or ProcessorError(f"partition {p}: {e}")
                self.request_stop()
                return
            except Exception as e:  # a broker error, a closed store: never leave the partition paused
                log.exception("partition %d: restore failed; retrying in %.1fs", p, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                if isinstance(e, StoreClosedError):
                    self._stores.pop(p, None)
        if self._restoring.get(p) is r:
            del self._restoring[p]
            if not r.stop:
                self._restored[p] = r

    async def _restore_once(self, r: Restore, store: Store) -> None:
        p = r.partition
        lane = Lane(f"restore-{p}")
        last = 0.0

        def progress(done: int, left: int, rate: float) -> None:
            nonlocal last
            r.done, r.left, r.rate = done, left, rate
            if (done or left) and time.monotonic() - last >= 5:
                last = time.monotonic()
                eta = f", ETA {left / rate:.0f}s" if rate > 0 and left else ""
                log.info("partition %d: restoring, %d records applied, %d left, %.0f records/s%s",
                         p, done, left, rate, eta)

        try:
            stats = await lane.call(lambda: restore(
                store, consumer_config=self._client, topic=self.app.changelog_topic,
                partition=p, progress=progress, should_stop=lambda: r.stop, deadline_s=600),
                660, f"restoring partition {p}")
        finally:
            lane.close()
        if stats.records:
            log.info("partition %d: restored %d changelog records in %.2fs", p, stats.records,
                     time.monotonic() - r.started)
        if self._steps is None:  # not running (an engine driven piecewise by a test)
            return
        lane = Lane(f"salvage-{p}")
        try:
            r.salvaged = await lane.call(partial(self._salvage, p, store), 120, f"salvaging steps of partition {p}")
        finally:
            lane.close()
        if r.salvaged.entries:
            log.info("partition %d: %d step result(s) of %d invocation(s) salvaged from %s", p,
                     sum(len(es) for es in r.salvaged.entries.values()), len(r.salvaged.entries),
                     self.app.steps_topic)

    def _salvage(self, p: int, store: Store) -> steps.Salvaged:
        """On a lane: the steps log's records past the last absorbed offset that the latest committed
        generation wrote, re-written under this owner's generation (docs/decisions/007)."""
        step_log = self._steps
        assert step_log is not None
        gen, start = meta_int(store.get, "steps-gen"), meta_int(store.get, "steps-from")
        config = self._client
        end = log_end(config, self.app.steps_topic, p, deadline=time.monotonic() + 60)
        return steps.salvage(gen, steps.read(config, self.app.steps_topic, p, start, end, timeout=60), end,
                             lambda copies: step_log.write_now(p, copies, timeout=30))

    async def _consumer_step(self, fn: Callable[[], T], what: str, partitions: Iterable[int]) -> T | None:
        """One activation step on the consumer lane; None when it failed (retried at the next poll;
        a stuck consumer is replaced)."""
        try:
            return await self._consumer_lane.call(fn, 15, what)
        except Stuck as e:
            self._consumer_failed = str(e)
        except KafkaException as e:
            log.warning("%s of partitions %s failed (%s); retrying", what, sorted(partitions), e)
        return None

    async def _activate(self) -> None:
        """On the poll loop, between polls: restored partitions get their committed offsets (rewinding
        where records were dropped), a worker loaded from the store, and are resumed."""
        ready = dict(self._restored)
        consumer = self._consumer
        assert consumer is not None
        tps = self._tps(ready)
        committed = await self._consumer_step(lambda: consumer.committed(tps, timeout=10),
                                              "reading committed offsets", ready)
        if committed is None:
            return
        by_partition: dict[int, dict[str, int]] = {p: {} for p in ready}
        for tp in committed:
            if tp.error is None and tp.offset >= 0:
                by_partition[tp.partition][tp.topic] = tp.offset
        seeks = [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                 for tp in committed if ready[tp.partition].seek]
        resume = [tp for tp in tps if not (self._inputs_paused and tp.topic in self.app.bindings)]

        def rewind_and_resume() -> bool:
            for tp in seeks:
                consumer.seek(tp)
            consumer.resume(resume)
            return True

        if await self._consumer_step(rewind_and_resume, "rewinding and resuming partitions", ready) is None:
            return
        if self._rebuilding:  # it began while we waited on the consumer and did not see these partitions;
            for r in ready.values():  # their records are dropped until it ends: rewind them then
                r.seek = True
            return
        for p in sorted(ready):
            del self._restored[p]
            w = PartitionWorker(app=self.app, partition=p, partitions_total=self.partitions_total,
                                store=self._stores[p], step_executor=self.step_executor, on_work=self._on_work,
                                trimmer=self._trimmer, steps=self._steps, step_lease_s=self._step_lease_s,
                                topics=self._topics)
            w.stats = self.stats
            w.set_committed(by_partition[p])
            self._held_paused.discard(p)  # resumed above, with a worker that holds nothing
            self.workers[p] = w
            w.load(ready[p].salvaged)
        self._ticked = time.monotonic()  # loading is work on this loop, not a stall
        log.info("partitions %s active", sorted(ready))
        if not self._restoring and not self._restored and set(self.workers) == self._owned:
            log.info("assigned partitions %s ready", sorted(self._owned))
            self.ready.set()

    async def _release(self, numbers: set[int], *, commit: bool, deadline: Deadline) -> None:
        """Give partitions up (revoke: `commit` what is pending first; lost: drop it), all within
        `deadline`. A store is closed only when no commit and no restore can touch it any more."""
        numbers = set(numbers)
        self._owned -= numbers
        self._epoch += 1
        for p in numbers:
            self._restored.pop(p, None)
        restores = [r for p, r in self._restoring.items() if p in numbers]
        for r in restores:
            r.stop = True
        active = numbers & set(self.workers)
        if commit and active and not self._rebuilding:
            await self.commit_cycle(active, deadline=deadline)
        for r in restores:
            if r.task is not None and not r.task.done():
                try:
                    await asyncio.wait_for(asyncio.shield(r.task), deadline.left())
                except TimeoutError:
                    log.warning("partition %d: restore still running at release", r.partition)
        locked = False
        try:
            await asyncio.wait_for(self._commit_lock.acquire(), max(0.01, deadline.left()))
            locked = True
        except TimeoutError:
            log.warning("partitions %s: a commit is still in flight at release; closing their stores after it",
                        sorted(numbers))
        try:
            for p in numbers:
                w = self.workers.pop(p, None)
                if w is not None:
                    w.discard()
            if locked:
                self._close_stores(numbers)
            else:
                asyncio.get_running_loop().create_task(self._close_stores_later(numbers))
        finally:
            if locked:
                self._commit_lock.release()
        if numbers & (active | {r.partition for r in restores}):
            log.info("released partitions %s", sorted(numbers & (active | {r.partition for r in restores})))

    def _close_stores(self, numbers: Iterable[int]) -> None:
        for p in numbers:
            if p in self._restoring or p in self._owned:
                continue  # a restore still runs on it, or it came back meanwhile
            store = self._stores.pop(p, None)
            if store is not None:
                store.sync()
                store.close()

    async def _close_stores_later(self, numbers: set[int]) -> None:
        async with self._commit_lock:
            self._close_stores(numbers)
