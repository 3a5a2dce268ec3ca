"""The engine: one consumer, one transactional producer, the group-commit cycle and rebalances.

Threads: the consumer is only called from ``_consumer_thread`` (rebalance callbacks run there and
hop onto the event loop); blocking transaction calls run on ``_commit_thread``; synchronous step
bodies run on a pool. Everything that touches partition workers runs on the event loop.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from processor._app import App
from processor._engine import faults
from processor._engine import kafka as kio
from processor._engine.memtrim import Trimmer
from processor._engine.metrics import CommitTimings, Stopwatch
from processor._engine.partition import CycleSlice, InRecord, PartitionWorker
from processor._errors import ConfigurationError, ProcessorError
from state.changelog import restore
from state.store import PartitionStore, Store

log = logging.getLogger("processor.engine")


class TxnPhase(enum.Enum):
    IDLE = "idle"
    COMMITTING = "committing"
    ABORTING = "aborting"


class _CommitFailed(Exception):
    def __init__(self, error: KafkaError | str, *, fatal: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.fatal = fatal


class Engine:
    """Runs an app as one processor instance of its consumer group."""

    def __init__(self, app: App, *, bootstrap_servers: str, state_dir: str | Path,
                 instance_id: str | None = None, consumer_config: dict[str, Any] | None = None,
                 producer_config: dict[str, Any] | None = None) -> None:
        self.app = app
        self.bootstrap = bootstrap_servers
        self.root = Path(state_dir) / app.name
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_state_dir(self.root)
        self.instance_id = instance_id or self._persisted_instance_id()
        self._consumer_extra = consumer_config or {}
        self._producer_extra = producer_config or {}
        self.workers: dict[int, PartitionWorker] = {}
        self._stores: dict[int, PartitionStore] = {}
        self._stop = asyncio.Event()
        self._work = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._epoch = 0
        self._inputs_paused = False
        self._trimmer = Trimmer()
        self._needs_rewind = False
        self._consumer_thread = ThreadPoolExecutor(1, thread_name_prefix="consumer")
        self._commit_thread = ThreadPoolExecutor(1, thread_name_prefix="commit")
        self.step_executor = ThreadPoolExecutor(app.config.step_threads, thread_name_prefix="step")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Consumer | None = None
        # Two transactional producers take turns: the next transaction starts while the coordinator
        # still completes the previous one (docs/decisions/002-alternating-transactional-producers.md).
        self._producers: list[Producer | None] = [None] * app.config.transactional_producers
        self._turn = 0
        self._error: BaseException | None = None
        self.phase = TxnPhase.IDLE
        self.partitions_total = 0
        self.commits = 0
        self._group_metadata: object | None = None
        self.timings = CommitTimings()
        self.ready = asyncio.Event()

    def _persisted_instance_id(self) -> str:
        path = self.root / "instance-id"
        if not path.exists():
            path.write_text(uuid.uuid4().hex[:12])
        return path.read_text().strip()

    def transactional_id(self, slot: int) -> str:
        return f"{self.app.name}-{self.instance_id}-{slot}"

    @property
    def input_topics(self) -> list[str]:
        return [*self.app.bindings, self.app.inbox_topic]

    def request_stop(self) -> None:
        self._stop.set()

    def in_memory_invocations(self) -> int:
        return sum(w.in_memory() for w in self.workers.values())

    # -- run -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``request_stop()`` (or a fatal error, which is raised)."""
        self._loop = asyncio.get_running_loop()
        admin = AdminClient(kio.base_config(self.bootstrap))
        await asyncio.to_thread(kio.check_reachable, admin, self.bootstrap)
        self.partitions_total = await asyncio.to_thread(kio.ensure_topics, admin, self.app)
        self._producers = list(await asyncio.gather(
            *(asyncio.to_thread(self._new_producer, i) for i in range(len(self._producers)))))
        # Static membership: a restarted instance takes its partitions straight back, no rebalance.
        self._consumer = Consumer(kio.consumer_config(
            self.bootstrap, self.app, {"group.instance.id": self.instance_id, **self._consumer_extra}))
        self._consumer.subscribe(self.input_topics, on_assign=self._cb_assign,
                                 on_revoke=self._cb_revoke, on_lost=self._cb_lost)
        log.info("instance %s of app %s started (transactional.ids %s; %d partitions per topic)",
                 self.instance_id, self.app.name,
                 ", ".join(self.transactional_id(i) for i in range(len(self._producers))), self.partitions_total)
        tasks = [asyncio.create_task(self._poll_loop(), name="poll"),
                 asyncio.create_task(self._commit_loop(), name="commit")]
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            if t.done() and t.exception() is not None:
                self._error = self._error or t.exception()
        self._stop.set()
        self._work.set()
        await self._shutdown(tasks)
        if self._error is not None:
            raise self._error

    def _new_producer(self, slot: int) -> Producer:
        p = Producer(kio.producer_config(self.bootstrap, self.app, self.transactional_id(slot), self._producer_extra))
        p.init_transactions(60)  # fences our predecessor and aborts its open transaction
        return p

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        for t in tasks:
            if not t.done():
                try:
                    await asyncio.wait_for(t, timeout=30)
                except (TimeoutError, asyncio.CancelledError):
                    t.cancel()
                except Exception as e:
                    self._error = self._error or e
        consumer = self._consumer
        if consumer is not None:
            loop = asyncio.get_running_loop()
            try:  # close() revokes: the revoke callback commits or aborts what is pending
                await asyncio.wait_for(loop.run_in_executor(self._consumer_thread, consumer.close), 60)
            except Exception as e:
                log.warning("consumer close: %s", e)
        await self._drop_partitions(set(self.workers), commit=False)
        for producer in self._producers:
            if producer is not None:
                await asyncio.to_thread(producer.flush, 10)
        self._consumer_thread.shutdown(wait=False)
        self._commit_thread.shutdown(wait=False)
        self.step_executor.shutdown(wait=False, cancel_futures=True)
        log.info("commit cycles: %s", self.timings.summary())
        log.info("instance %s stopped", self.instance_id)

    # -- polling ---------------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._consumer is not None
        consumer = self._consumer
        while not self._stop.is_set():
            if self._needs_rewind:
                self._needs_rewind = False
                await loop.run_in_executor(self._consumer_thread, self._rewind)
                for w in self.workers.values():
                    w.load()
            epoch = self._epoch
            pause = self._backpressure()
            msgs = await loop.run_in_executor(self._consumer_thread, _fetch, consumer, pause)
            if epoch == self._epoch:  # else a transaction failed meanwhile: these get re-read
                for m in msgs:
                    self._route(m)
            now = int(time.time() * 1000)
            for w in list(self.workers.values()):
                w.fire_timers(now)
            if self._error is not None:
                raise self._error

    def _backpressure(self) -> tuple[str, list[TopicPartition]] | None:
        """Pause the input topics while too many invocations are in flight (the inbox keeps flowing:
        it carries the completions that let them finish); resume below 80 %. None: no change."""
        n = sum(w.in_flight() for w in self.workers.values())
        limit = self.app.config.max_in_flight
        if not self._inputs_paused and n > limit:
            self._inputs_paused = True
            log.info("%d invocations in flight (max_in_flight %d): pausing input", n, limit)
        elif self._inputs_paused and n < 0.8 * limit:
            self._inputs_paused = False
            log.info("%d invocations in flight: resuming input", n)
        else:
            return None
        action = "pause" if self._inputs_paused else "resume"
        return action, [TopicPartition(t, p) for p in self.workers for t in self.app.bindings]

    def _route(self, m: Message) -> None:
        err = m.error()
        if err is not None:
            if err.fatal() or err.code() == KafkaError._FATAL:
                # e.g. another consumer took our group.instance.id: this instance must not go on
                raise ProcessorError(f"the Kafka consumer hit a fatal error: {err.str()}")
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer: %s", err)
            return
        rec = InRecord.of(m)
        w = self.workers.get(rec.partition)
        if w is None:
            return  # revoked while the batch was in flight; the next owner reads it
        if rec.topic == self.app.inbox_topic:
            w.on_inbox(rec)
        else:
            w.on_input(rec, self.app.bindings[rec.topic])

    # -- the commit cycle ------------------------------------------------------------------------

    def _on_work(self) -> None:
        self._work.set()

    async def _commit_loop(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            if self._stop.is_set() and not self._has_work():
                return
            await self._linger()
            await self.commit_cycle()
            if self._stop.is_set():
                return

    async def _linger(self) -> None:
        """Before sealing a cycle, let just-released handlers run and wait (briefly) for step bodies
        already executing: their results then ride this cycle instead of the next one."""
        for _ in range(6):  # released handler -> finish -> next invocation -> its first step: a few hops
            await asyncio.sleep(0)
        deadline = time.monotonic() + self.app.config.commit_linger_ms / 1000
        while any(w.bodies_running for w in self.workers.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.0002)

    def _has_work(self) -> bool:
        return any(w.has_work() for w in self.workers.values())

    async def commit_cycle(self, partitions: set[int] | None = None) -> bool:
        """Commit everything pending (of `partitions`, default all) in one transaction. False when the
        transaction failed and the partitions were rebuilt from their last committed state."""
        async with self._commit_lock:
            slices = [w.seal() for p, w in self.workers.items()
                      if (partitions is None or p in partitions) and w.has_work()]
            if not slices:
                return True
            loop = asyncio.get_running_loop()
            self.phase = TxnPhase.COMMITTING
            slot = self._turn
            started = time.perf_counter()
            stores = {s.partition: self.workers[s.partition].state.store for s in slices}
            try:
                await loop.run_in_executor(self._commit_thread, self._commit_blocking, slot, slices, stores)
            except _CommitFailed as e:
                self.phase = TxnPhase.ABORTING
                await self._recover(e, slot)
                self.phase = TxnPhase.IDLE
                return False
            self.phase = TxnPhase.IDLE
            self._turn = (slot + 1) % len(self._producers)
            self.timings.add("cycle", time.perf_counter() - started)
            self.commits += 1
            for s in slices:
                w = self.workers.get(s.partition)
                if w is not None:
                    w.committed(s)
            return True

    def _commit_blocking(self, slot: int, slices: list[CycleSlice], stores: dict[int, Store]) -> None:
        """On the commit thread: one Kafka transaction for every slice, then (only once it committed)
        each overlay applied to its LMDB store with the changelog offset after its last record."""
        p, consumer = self._producers[slot], self._consumer
        assert p is not None and consumer is not None
        ends: dict[int, int] = {}
        errors: list[KafkaError] = []

        def on_changelog(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(err)
            else:
                part, off = msg.partition() or 0, msg.offset() or 0
                ends[part] = max(ends.get(part, 0), off + 1)

        def on_output(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err)

        watch = Stopwatch(self.timings)
        try:
            p.begin_transaction()
            changelog = self.app.changelog_topic
            n = 0
            for s in slices:
                for k, v in s.overlay.items():
                    _produce(p, changelog, s.partition, k, v, None, on_changelog)
                    n += 1
                for r in s.outputs:
                    _produce(p, r.topic, r.partition, r.key, r.value, r.headers, on_output)
                n += len(s.outputs)
            self.timings.records.append(n)
            watch.lap("produce")
            left = p.flush(30)
            if left or errors:
                raise _CommitFailed(errors[0] if errors else f"{left} records undelivered after 30s")
            watch.lap("flush")
            offsets = [TopicPartition(t, s.partition, o) for s in slices for t, o in s.offsets.items()]
            if offsets:
                # Cached at assignment: asking the consumer here blocks behind its consume() call
                # (~100 ms). A stale generation is rejected by the broker (KIP-447), which aborts.
                group = self._group_metadata or consumer.consumer_group_metadata()
                p.send_offsets_to_transaction(offsets, group, 30)
                watch.lap("send_offsets")
            faults.point("before_kafka_commit")
            p.commit_transaction(30)
            watch.lap("commit")
        except KafkaException as e:
            err: KafkaError = e.args[0]
            fatal = err.fatal() or (not err.txn_requires_abort() and not err.retriable())
            raise _CommitFailed(err, fatal=fatal) from None
        faults.point("after_kafka_commit")
        for s in slices:
            if len(s.overlay):
                store = stores[s.partition]
                store.apply(s.overlay.items(), ends.get(s.partition, store.changelog_offset()))
        watch.lap("apply")

    async def _recover(self, failure: _CommitFailed, slot: int) -> None:
        """Abort, drop the uncommitted overlays and in-memory invocations, rewind and rebuild."""
        log.warning("transaction failed (%s); aborting and rebuilding partitions %s from their last commit",
                    failure, sorted(self.workers))
        producer = self._producers[slot]
        assert producer is not None
        if failure.fatal:
            err = failure.error
            if isinstance(err, KafkaError) and err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
                self._error = ProcessorError(
                    f"transactional.id {self.transactional_id(slot)} was fenced: another instance runs with "
                    f"instance id {self.instance_id!r}; every instance needs its own")
                self._stop.set()
                return
            self._producers[slot] = await asyncio.to_thread(self._new_producer, slot)
        else:
            try:
                await asyncio.to_thread(producer.abort_transaction, 30)
            except KafkaException as e:
                log.warning("abort failed (%s); starting a new producer", e.args[0])
                self._producers[slot] = await asyncio.to_thread(self._new_producer, slot)
        for w in self.workers.values():
            w.discard()
        # The poll loop rewinds to the committed offsets and reloads before it routes anything else;
        # doing it here could deadlock with a rebalance callback waiting for the commit lock.
        self._epoch += 1
        self._needs_rewind = True

    def _rewind(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        tps = [TopicPartition(t, p) for p in self.workers for t in self.input_topics]
        for tp in consumer.committed(tps, timeout=30):
            consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))

    # -- rebalances (callbacks run on the consumer thread) ---------------------------------------

    def _hop(self, coro_fn: Callable[[], Any]) -> None:
        assert self._loop is not None
        try:
            asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result()
        except BaseException as e:
            self._error = self._error or e
            self._loop.call_soon_threadsafe(self._stop.set)

    def _cb_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._group_metadata = consumer.consumer_group_metadata()
        self._hop(lambda: self._assign(partitions))

    def _cb_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._hop(lambda: self._drop_partitions({tp.partition for tp in partitions}, commit=True))

    def _cb_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._hop(lambda: self._drop_partitions({tp.partition for tp in partitions}, commit=False))

    async def _assign(self, tps: list[TopicPartition]) -> None:
        numbers = kio.check_copartitioned([(tp.topic, tp.partition) for tp in tps], self.input_topics)
        await asyncio.gather(*(self._open_partition(p) for p in sorted(numbers - set(self.workers))))
        self._inputs_paused = False  # a new assignment starts unpaused
        log.info("assigned partitions %s", sorted(numbers))
        self.ready.set()

    async def _open_partition(self, p: int) -> None:
        store = self._stores.get(p)
        if store is None:
            store = await asyncio.to_thread(PartitionStore.open, self.root / str(p))
            self._stores[p] = store
        t0 = time.monotonic()

        def progress(done: int, left: int, rate: float) -> None:
            if done or left:
                    log.info("partition %d: restoring changelog, %d records applied, %d left, %.0f records/s",
                         p, done, left, rate)

        stats = await asyncio.to_thread(
            restore, store, consumer_config=kio.base_config(self.bootstrap),
            topic=self.app.changelog_topic, partition=p, progress=progress)
        if stats.records:
            log.info("partition %d: restored %d changelog records in %.2fs", p, stats.records,
                     time.monotonic() - t0)
        w = PartitionWorker(app=self.app, partition=p, partitions_total=self.partitions_total, store=store,
                            step_executor=self.step_executor, on_work=self._on_work, trimmer=self._trimmer)
        self.workers[p] = w
        w.load()

    async def _drop_partitions(self, numbers: set[int], *, commit: bool) -> None:
        numbers &= set(self.workers)
        if not numbers:
            return
        if commit:
            try:
                await asyncio.wait_for(self.commit_cycle(numbers), 30)
            except TimeoutError:
                log.warning("commit on revoke timed out; the next owner resumes from the last commit")
        async with self._commit_lock:
            for p in numbers:
                w = self.workers.pop(p)
                w.discard()
                store = self._stores.pop(p, None)
                if store is not None:
                    store.sync()
                    store.close()
        log.info("released partitions %s", sorted(numbers))


def _lock_state_dir(root: Path) -> TextIO:
    """Hold an exclusive lock on the app's state dir for the life of the process: two instances on
    one state dir would share an instance id and fence each other."""
    f = (root / "LOCK").open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ConfigurationError(f"state dir {root} is in use by {holder}; every instance needs its own "
                                 "--state-dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f


def _fetch(consumer: Consumer, flow: tuple[str, list[TopicPartition]] | None) -> list[Message]:
    """On the consumer thread: apply a pause/resume decision, then block for the first record (or
    50 ms) and take whatever else is already there. A plain ``consume(n, timeout)`` waits for all n
    records or the whole timeout: +50 ms per idle pickup."""
    if flow is not None:
        (consumer.pause if flow[0] == "pause" else consumer.resume)(flow[1])
    first = consumer.poll(0.05)
    if first is None:
        return []
    return [first, *consumer.consume(999, 0)]


def _produce(p: Producer, topic: str, partition: int | None, key: bytes | None, value: bytes | None,
             headers: list[tuple[str, bytes]] | None, cb: Callable[[KafkaError | None, Message], None]) -> None:
    kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": cb}
    if partition is not None:
        kwargs["partition"] = partition
    if headers:
        kwargs["headers"] = headers
    while True:
        try:
            p.produce(topic, **kwargs)
            return
        except BufferError:
            p.poll(0.05)  # local queue full: let deliveries drain


__all__ = ["ConfigurationError", "Engine"]
