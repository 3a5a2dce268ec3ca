"""The engine: one consumer, transactional producers, the group-commit cycle, rebalances, restores
and recovery from faults.

Threads: every consumer call runs on the consumer lane (rebalance callbacks run there and hop onto
the event loop); every transactional call runs on its producer's lane; restores run on lanes of
their own; LMDB applies run on the apply thread; synchronous step bodies on a pool. A lane whose
call outlives its deadline is abandoned with its client (``lanes.py``). Everything that touches
partition workers runs on the event loop.

Recovery has one path (``_rebuild``): whatever went wrong — a transaction that failed, timed out or
hung, a fence, a stall of this process — the engine drops every partition's in-memory state,
replaces the producer if it cannot be trusted, confirms with an empty fenced transaction that it
still owns its partitions (or waits for the group to hand out new ones), and brings each partition
back as an assignment would: tail-restore from the changelog, rewind to the committed offsets,
reload. The fencing argument is in docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from processor._app import App
from processor._engine import faults, steps, txn
from processor._engine import kafka as kio
from processor._engine.cycle import Cycle
from processor._engine.health import BEAT_S, Health
from processor._engine.lanes import Deadline, Lane, Stuck
from processor._engine.memtrim import Trimmer
from processor._engine.metrics import CommitTimings
from processor._engine.partition import PartitionWorker, meta_int
from processor._engine.records import InRecord
from processor._engine.statedir import lock_state_dir, persisted_instance_id, record_instance_id
from processor._engine.stats import PartitionStats
from processor._engine.steps import StepLog
from processor._errors import ConfigurationError, ProcessorError
from processor._kafka_config import KafkaConfig
from state.changelog import RestoreCancelled, RestoreError, log_end, restore
from state.store import PartitionStore, Store, StoreClosedError, StoreFormatError

if TYPE_CHECKING:
    from processor._admin.server import AdminConfig, AdminServer

log = logging.getLogger("processor.engine")
T = TypeVar("T")

POLL_S = 120.0          # a poll runs rebalance callbacks, which may commit and drop partitions
STALL_S = 4.0           # a freeze this long may have outlived the 6 s session: confirm ownership
SHUTDOWN_S = 30.0       # SIGTERM to exit, whatever Kafka does meanwhile
FENCES_TO_GIVE_UP = 5   # young transactions fenced within FENCE_WINDOW_S: another instance has our id
CONSUMER_FENCES_TO_GIVE_UP = 10  # consumers fenced (FENCED_INSTANCE_ID) within FENCE_WINDOW_S
FENCE_WINDOW_S = 120.0
ROUTE_TURN = 64         # records routed per event-loop turn (their handlers run as they are routed)
MAX_LINGER_S = 0.1      # the longest a cycle waits for handlers still making progress before it seals
FINISH_FEW = 64         # a cycle waits for the running invocations to finish when there are at most this many


@dataclass(slots=True, eq=False)
class _Restore:
    partition: int
    seek: bool                    # records were fetched and dropped: rewind before resuming
    stop: bool = False
    task: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)
    salvaged: steps.Salvaged | None = None  # what the steps log holds that no committed cycle absorbed
    done: int = 0        # progress as the restore last reported it (the admin endpoint shows it)
    left: int = 0
    rate: float = 0.0


class Engine:
    """Runs an app as one processor instance of its consumer group."""

    def __init__(self, app: App, *, bootstrap_servers: str, state_dir: str | Path,
                 instance_id: str | None = None, kafka_config: KafkaConfig | None = None,
                 consumer_config: dict[str, Any] | None = None,
                 producer_config: dict[str, Any] | None = None, admin: AdminConfig | None = None) -> None:
        """`kafka_config`: the user's client settings (default: the app's ``kafka_config``);
        `consumer_config`/`producer_config`: extra settings tests give the engine's own clients;
        `admin`: the admin endpoint's (processor/_admin), none without."""
        self.app = app
        self.bootstrap = bootstrap_servers
        self.kafka_config = app.kafka_config if kafka_config is None else kafka_config
        self._client = kio.client_config(bootstrap_servers, self.kafka_config)  # every client starts from it
        self.root = Path(state_dir) / app.name
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = lock_state_dir(self.root)
        self.instance_id = instance_id or persisted_instance_id(self.root)
        record_instance_id(self.root, self.instance_id)
        self._consumer_extra = consumer_config or {}
        self._producer_extra = producer_config or {}
        self._step_lease_s = kio.step_lease_s(kio.consumer_config(self._client, app, self._consumer_extra))
        self.workers: dict[int, PartitionWorker] = {}
        self._stores: dict[int, PartitionStore] = {}
        self._owned: set[int] = set()
        self._restoring: dict[int, _Restore] = {}
        self._restored: dict[int, _Restore] = {}  # restored, waiting for the poll loop to activate them
        self._assign_generation = 0
        self._stop = asyncio.Event()
        self._work = asyncio.Event()
        self._progress = asyncio.Event()  # set on any work: what a cycle waiting for invocations wakes on
        self._work_done = 0  # counts every write, output and touched invocation: handlers progressing
        self._sealed = asyncio.Event()  # set whenever a cycle is sealed: a full cycle lets input flow again
        self._commit_lock = asyncio.Lock()
        self._draining = False  # the cycle about to be sealed takes no new input (``_linger``)
        self._epoch = 0  # bumped whenever records already fetched must not be routed
        self._inputs_paused = False
        self._held_paused: set[int] = set()  # paused because their worker holds input back
        self._flow: list[tuple[str, list[TopicPartition]]] = []  # pause/resume for the next poll
        self._trimmer = Trimmer()
        self._consumer_lane = Lane("consumer")
        self._consumer_failed: str | None = None
        slots = app.config.transactional_producers
        self._producer_lanes = [Lane(f"producer-{i}") for i in range(slots)]
        self._apply_pool = ThreadPoolExecutor(1, thread_name_prefix="apply")
        self.step_executor = ThreadPoolExecutor(app.config.step_threads, thread_name_prefix="step")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Consumer | None = None
        self._steps: StepLog | None = None
        # Two transactional producers take turns: the next transaction starts while the coordinator
        # still completes the previous one (docs/decisions/002-alternating-transactional-producers.md).
        self._producers: list[Producer | None] = [None] * slots
        self._graveyard: deque[object] = deque(maxlen=32)  # clients we walked away from: never destroyed here
        self._turn = 0
        self._error: BaseException | None = None
        self._rebuilding = False
        self._reconfirm = False  # a reason to rebuild came up while an ownership check was under way
        self._rebuild_task: asyncio.Task[None] | None = None
        self._producer_fences: deque[float] = deque()
        self._consumer_fences: deque[float] = deque()
        self._ticked = time.monotonic()
        self._stalled_for = 0.0
        self.partitions_total = 0
        self.commits = 0
        self.rebuilds = 0
        self._group_metadata: object | None = None
        self.timings = CommitTimings()
        self.ready = asyncio.Event()
        # Read by the admin endpoint (processor/_admin): plain counters, marks and the latest stable
        # offsets the consumer's statistics reported.
        self.admin_config = admin
        self.admin: AdminServer | None = None
        self.health = Health()
        self.stats = PartitionStats()
        self.records_in: dict[str, int] = {}
        self.rebalances = {"assigned": 0, "revoked": 0, "lost": 0}
        self.txn_failures: dict[str, int] = {}
        self.fences = {"producer": 0, "consumer": 0}
        self.stable_offsets: dict[tuple[str, int], int] = {}

    def transactional_id(self, slot: int) -> str:
        return f"{self.app.name}-{self.instance_id}-{slot}"

    @property
    def input_topics(self) -> list[str]:
        return [*self.app.bindings, self.app.inbox_topic]

    @property
    def _txn_s(self) -> float:
        return self.app.config.transaction_timeout_ms / 1000

    def request_stop(self) -> None:
        self._stop.set()
        self._work.set()

    def in_memory_invocations(self) -> int:
        return sum(w.in_memory() for w in self.workers.values())

    # -- run -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``request_stop()`` (or an error it cannot recover from, which is raised)."""
        self._loop = asyncio.get_running_loop()
        if self.admin_config is not None:  # first: /healthz answers while the engine connects
            from processor._admin.server import AdminServer

            self.admin = AdminServer.start(self, self.admin_config, self._loop)
        try:
            await self._run()
        finally:
            if self.admin is not None:
                await asyncio.to_thread(self.admin.close)

    async def _run(self) -> None:
        assert self._loop is not None
        if self.kafka_config.settings:
            log.info("Kafka client settings: %s", self.kafka_config.describe())
        admin = await asyncio.to_thread(kio.connect, self._client)
        self.partitions_total = await asyncio.to_thread(kio.ensure_topics, admin, self.app)
        await asyncio.gather(*(self._start_producer(i) for i in range(len(self._producers))))
        self._steps = StepLog({**self._client, **self._producer_extra}, self.app.steps_topic,
                              self._loop)
        self._consumer = await self._consumer_lane.call(self._new_consumer, 30, "creating the consumer")
        log.info("instance %s of app %s started (transactional.ids %s; %d partitions per topic)",
                 self.instance_id, self.app.name,
                 ", ".join(self.transactional_id(i) for i in range(len(self._producers))), self.partitions_total)
        self._ticked = time.monotonic()
        ticker = threading.Thread(target=self._tick, name="stall-watch", daemon=True)
        ticker.start()
        tasks = [asyncio.create_task(self._poll_loop(), name="poll"),
                 asyncio.create_task(self._commit_loop(), name="commit")]
        beat = asyncio.create_task(self._heartbeat(), name="heartbeat")
        self.health.running = True
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        self.health.running = False
        beat.cancel()
        for t in tasks:
            if t.done() and t.exception() is not None:
                self._error = self._error or t.exception()
        self.request_stop()
        await self._shutdown(tasks, Deadline(SHUTDOWN_S))
        if self._error is not None:
            raise self._error

    def _new_producer(self, slot: int) -> Producer:
        p = Producer(kio.producer_config(self._client, self.app, self.transactional_id(slot), self._producer_extra))
        try:
            p.init_transactions(30)  # fences our predecessor and aborts (or completes) its open transaction
        except KafkaException as e:
            if kio.is_refusal(e.args[0].code()):
                raise ConfigurationError(kio.not_authorized(
                    e.args[0].str(), f"transactional.id {self.transactional_id(slot)}")) from None
            raise
        return p

    async def _start_producer(self, slot: int) -> None:
        lane = self._producer_lanes[slot]
        if lane.abandoned:
            lane = self._producer_lanes[slot] = Lane(f"producer-{slot}")
        self._producers[slot] = await lane.call(lambda: self._new_producer(slot), 45,
                                                f"init_transactions of {self.transactional_id(slot)}")

    def _lose_producer(self, slot: int) -> None:
        """Never use this producer again: a new one with the same transactional.id fences it."""
        old = self._producers[slot]
        if old is not None:
            self._graveyard.append(old)
        self._producers[slot] = None
        lane = self._producer_lanes[slot]
        if not lane.abandoned:
            lane.close()
        self._producer_lanes[slot] = Lane(f"producer-{slot}")

    def _new_consumer(self) -> Consumer:
        # Static membership: a restarted instance takes its partitions straight back, no rebalance.
        extra: dict[str, Any] = {"group.instance.id": self.instance_id}
        if self.admin_config is not None:  # consumer lag for /metrics, from the latest stable offsets
            extra |= {"statistics.interval.ms": 5000, "stats_cb": self._on_consumer_stats}
        c = Consumer(kio.consumer_config(self._client, self.app, {**extra, **self._consumer_extra}))
        c.subscribe(self.input_topics, on_assign=self._cb_assign, on_revoke=self._cb_revoke, on_lost=self._cb_lost)
        return c

    async def _shutdown(self, tasks: list[asyncio.Task[None]], deadline: Deadline) -> None:
        for t in tasks:
            if not t.done():
                try:
                    await asyncio.wait_for(t, timeout=max(0.1, deadline.left() - 15))
                except (TimeoutError, asyncio.CancelledError):
                    t.cancel()
                except Exception as e:
                    self._error = self._error or e
        if self._rebuild_task is not None:
            self._rebuild_task.cancel()
        consumer = self._consumer
        if consumer is not None and not self._consumer_lane.abandoned:
            try:  # close() revokes: the revoke callback commits what is pending
                await self._consumer_lane.call(consumer.close, max(0.1, deadline.left() - 2), "closing the consumer")
            except Stuck as e:
                log.warning("%s; leaving it", e)
            except Exception as e:
                log.warning("consumer close: %s", e)
        await self._release(set(self._owned) | set(self.workers) | set(self._restoring), commit=False,
                            deadline=Deadline(min(5.0, deadline.left())))
        for lane in (self._consumer_lane, *self._producer_lanes):
            lane.close()
        self._apply_pool.shutdown(wait=False)
        self.step_executor.shutdown(wait=False, cancel_futures=True)
        if self._steps is not None:
            self._steps.close()
        log.info("commit cycles: %s", self.timings.summary())
        log.info("instance %s stopped", self.instance_id)

    def _on_consumer_stats(self, text: str) -> None:
        """On the consumer lane (librdkafka's statistics, every 5 s): keep each partition's last
        stable offset (``read_committed``: what the group's committed offset trails). Replaced whole,
        so a reader on another thread sees one report or the next."""
        try:
            topics = orjson.loads(text).get("topics", {})
            self.stable_offsets = {(t, int(p)): int(ps["ls_offset"]) for t, ts in topics.items()
                                   for p, ps in ts.get("partitions", {}).items()
                                   if int(p) >= 0 and int(ps.get("ls_offset", -1)) >= 0}
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            log.debug("consumer statistics not understood: %s", e)

    async def _heartbeat(self) -> None:
        """Marks that the event loop runs (``/healthz`` fails when it stops: a handler blocking it)."""
        while True:
            self.health.beat = time.monotonic()
            await asyncio.sleep(BEAT_S)

    # -- stalls ----------------------------------------------------------------------------------

    def _tick(self) -> None:
        """A thread, not a task: a busy event loop is no stall, a frozen process (SIGSTOP, a VM
        pause) stops every thread."""
        while True:
            now = time.monotonic()
            gap = now - self._ticked
            if gap > STALL_S:
                self._stalled_for = max(self._stalled_for, gap)
            self._ticked = now
            time.sleep(0.2)

    def _check_stall(self) -> bool:
        """Whether work must wait: a rebuild runs, or this process was just frozen (which starts one).
        Asked before routing records, firing timers and sealing a cycle."""
        gap = max(self._stalled_for, time.monotonic() - self._ticked)
        if gap > STALL_S:
            self._stalled_for = 0.0
            self._ticked = time.monotonic()
            self._begin_rebuild(f"this process was frozen for {gap:.1f}s; confirming it still owns its "
                                "partitions before doing any work")
            return True
        return self._rebuilding

    # -- polling ---------------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while not self._stop.is_set():
            if self._consumer_failed is not None:
                await self._replace_consumer(self._consumer_failed)
            if self._restored and not self._rebuilding:
                await self._activate()
            if self._draining or self._cycle_full():
                await self._wait_for_seal()
                continue
            epoch = self._epoch
            flow, self._flow = [*self._flow, *self._backpressure()], []
            consumer = self._consumer
            assert consumer is not None
            try:
                msgs = await self._consumer_lane.call(partial(_fetch, consumer, flow, self._fetch_max), POLL_S,
                                                      "consumer poll")
            except Stuck as e:
                self._consumer_failed = str(e)
                continue
            if epoch == self._epoch and not self._check_stall():
                for i, m in enumerate(msgs, 1):
                    self._route(m)
                    if i % ROUTE_TURN == 0:  # handlers run as they are routed: let acks and commits in
                        await asyncio.sleep(0)
                        if epoch != self._epoch:
                            break  # partitions were released meanwhile: the rest is read again
                now = int(time.time() * 1000)
                for w in list(self.workers.values()):
                    w.fire_timers(now)
            if self._error is not None:
                raise self._error

    @property
    def _fetch_max(self) -> int:
        """Records one poll takes: a tenth of a cycle's bound, so a fetch routed into an almost full
        cycle overshoots it by little."""
        return max(1, min(1000, self.app.config.max_cycle_records // 10))

    def _cycle_full(self) -> bool:
        """Whether the open cycle holds ``max_cycle_records`` writes and outputs: then nothing new is
        routed until it is sealed, so no transaction grows past what commits well within
        ``transaction.timeout.ms`` (and no apply to LMDB takes long)."""
        return sum(w.open_records() for w in self.workers.values()) >= self.app.config.max_cycle_records

    async def _wait_for_seal(self) -> None:
        self._sealed.clear()
        self._on_work()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._sealed.wait(), 0.5)

    def _backpressure(self) -> list[tuple[str, list[TopicPartition]]]:
        """Pause the input topics while too many invocations are in flight (the inbox keeps flowing:
        it carries the completions that let them finish); resume below 80 %. Apart from that, a
        partition holding input back (a key's queue is full) is paused until it routed what it holds."""
        n = sum(w.in_flight() for w in self.workers.values())
        limit = self.app.config.max_in_flight
        flow: list[tuple[str, list[TopicPartition]]] = []
        if not self._inputs_paused and n > limit:
            self._inputs_paused = True
            log.info("%d invocations in flight (max_in_flight %d): pausing input", n, limit)
            flow.append(("pause", self._input_tps(self.workers)))
        elif self._inputs_paused and n < 0.8 * limit:
            self._inputs_paused = False
            log.info("%d invocations in flight: resuming input", n)
            flow.append(("resume", self._input_tps(set(self.workers) - self._held_paused)))
        for p, w in self.workers.items():
            if w.holding() and p not in self._held_paused:
                self._held_paused.add(p)
                if not self._inputs_paused:
                    flow.append(("pause", self._input_tps([p])))
            elif not w.holding() and p in self._held_paused:
                self._held_paused.discard(p)
                if not self._inputs_paused:
                    flow.append(("resume", self._input_tps([p])))
        return flow

    def _input_tps(self, partitions: Iterable[int]) -> list[TopicPartition]:
        return [TopicPartition(t, p) for p in partitions for t in self.app.bindings]

    def _route(self, m: Message) -> None:
        err = m.error()
        if err is not None:
            if kio.is_refusal(err.code()):
                self._refuse(kio.not_authorized(err.str(), f"consumer group {self.app.name!r} reading "
                                                f"{', '.join(self.input_topics)}"))
            elif err.fatal() or err.code() == KafkaError._FATAL:
                # e.g. FENCED_INSTANCE_ID after the broker was away longer than the session: the
                # consumer object is done for, the instance is not
                self._consumer_failed = f"the consumer hit a fatal error: {err.str()}"
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer: %s", err.str())
            return
        rec = InRecord.of(m)
        w = self.workers.get(rec.partition)
        if w is None:
            return  # not active (restoring, revoked, rebuilding): re-read from the committed offset
        self.records_in[rec.topic] = self.records_in.get(rec.topic, 0) + 1
        if rec.topic == self.app.inbox_topic:
            w.on_inbox(rec)
        else:
            w.on_input(rec, self.app.bindings[rec.topic])

    async def _replace_consumer(self, why: str) -> None:
        """A broken consumer is rebuilt, not a reason to exit: a broker outage longer than the session
        timeout ends in a fatal FENCED_INSTANCE_ID, and the state-dir lock already rules out a second
        process with our instance id on this host."""
        self._consumer_failed = None
        if "FENCED_INSTANCE_ID" in why or "fenced" in why.lower():
            self._note_fence(self._consumer_fences, CONSUMER_FENCES_TO_GIVE_UP, why)
        log.warning("%s: dropping partitions %s and starting a new consumer", why, sorted(self._owned))
        self._epoch += 1
        await self._release(set(self._owned) | set(self._restoring) | set(self.workers), commit=False,
                            deadline=Deadline(self._txn_s + 10))
        old, old_lane = self._consumer, self._consumer_lane
        self._consumer_lane = Lane("consumer")
        if old is not None:
            self._graveyard.append(old)
            if not old_lane.abandoned:
                try:
                    await old_lane.call(old.close, 10, "closing the failed consumer")
                except Stuck:
                    pass
                except Exception as e:
                    log.info("closing the failed consumer: %s", e)
            old_lane.close()
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._consumer = await self._consumer_lane.call(self._new_consumer, 30, "creating a consumer")
                return
            except (Stuck, KafkaException) as e:
                log.warning("creating a new consumer failed (%s); retrying in %.1fs", e, backoff)
                if self._consumer_lane.abandoned:
                    self._consumer_lane = Lane("consumer")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _refuse(self, why: str) -> None:
        """The cluster refuses what the app needs (an ACL, a login): stop with a configuration error
        (exit 2; retrying cannot help, and a restarted worker would only fail again)."""
        if self._error is None:
            self._error = ConfigurationError(why)
        self.request_stop()

    def _note_fence(self, fences: deque[float], limit: int, why: str) -> None:
        """Count fences of our own ids; many in a short time mean another instance runs with ours
        (one broker outage costs at most one of each kind)."""
        now = time.monotonic()
        self.fences["producer" if fences is self._producer_fences else "consumer"] += 1
        fences.append(now)
        while fences and fences[0] < now - FENCE_WINDOW_S:
            fences.popleft()
        if len(fences) >= limit and self._error is None:
            self._error = ProcessorError(
                f"fenced {len(fences)} times in {FENCE_WINDOW_S:.0f}s (last: {why}): another process "
                f"seems to run with instance id {self.instance_id!r}; every instance needs its own")
            self.request_stop()

    # -- the commit cycle ------------------------------------------------------------------------

    def _on_work(self) -> None:
        self._work_done += 1
        self._work.set()
        self._progress.set()

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
        linger = self.app.config.commit_linger_ms / 1000
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

    # -- recovery --------------------------------------------------------------------------------

    def _begin_rebuild(self, why: str, *, quiet: bool = False) -> None:
        self._epoch += 1
        if self._rebuilding:  # an ownership check under way may predate this (a freeze): check again
            self._reconfirm = True
            return
        self._rebuilding = True
        self.rebuilds += 1
        (log.debug if quiet else log.warning)("%s: rebuilding partitions %s from their last commit", why,
                                              sorted(self._owned))
        self._rebuild_task = asyncio.get_running_loop().create_task(self._rebuild(), name="rebuild")

    async def _rebuild(self) -> None:
        generation = self._assign_generation
        try:
            async with self._commit_lock:  # no commit in flight while partitions are dropped
                active = set(self.workers)
                for p in active:
                    self.workers.pop(p).discard()
                self._flow.append(("pause", self._tps(active)))
            # Fresh producers for every rebuild: after a broker outage librdkafka producers were seen
            # to hang on their first call again, one deadline each; init_transactions settles the old.
            for slot in range(len(self._producers)):
                self._lose_producer(slot)
            backoff, tries, said = 0.2, 0, 0.0
            while not self._stop.is_set() and generation == self._assign_generation:
                try:
                    self._reconfirm = False
                    await self._confirm_ownership()
                    if not self._reconfirm:
                        break
                except ConfigurationError as e:  # refused (an ACL revoked, say): retrying cannot help
                    self._refuse(str(e))
                    return
                except (Stuck, txn.TxnFailed, KafkaException) as e:
                    tries += 1
                    if time.monotonic() - said > 30:  # one line per 30 s while the broker or group is away
                        said = time.monotonic()
                        log.warning("ownership not confirmed yet (%d tries; %s); retrying until a new "
                                    "assignment arrives", tries, e)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            if self._stop.is_set() or generation != self._assign_generation:
                return  # a new assignment restores its partitions itself
            for p in sorted(active & self._owned):
                self._start_restore(p, seek=True)
            for r in self._restored.values():
                r.seek = True
        finally:
            self._rebuilding = False
            self._work.set()

    async def _confirm_ownership(self) -> None:
        """Start missing producers, then an empty fenced transaction re-committing offsets the group
        already holds: it commits only if this member still owns its partitions."""
        for slot, p in enumerate(self._producers):
            if p is None:
                await self._start_producer(slot)
        if not self._owned:
            return
        slot = self._turn
        producer = self._producers[slot]
        assert producer is not None
        # What the group holds now, not what this instance last saw committed: a commit abandoned at its
        # deadline may have committed (init_transactions above settled it), and re-committing older
        # offsets would rewind the group over records already in the changelog.
        lane = Lane("group-offsets")
        try:
            held = await lane.call(partial(self._group_offsets, set(self._owned)), 15, "reading the group's offsets")
        finally:
            lane.close()
        offsets = held or [TopicPartition(self.app.inbox_topic, min(self._owned), 0)]
        group = self._group_metadata
        try:
            await self._producer_lanes[slot].call(lambda: txn.probe(producer, offsets, group, self._txn_s),
                                                  self._txn_s + 5, "the ownership check")
        except Stuck:
            self._lose_producer(slot)
            raise
        except txn.TxnFailed as e:
            await self._settle_failed(slot, e, None, age_s=0.0, quiet=True)
            raise
        self._turn = (slot + 1) % len(self._producers)
        log.info("ownership of partitions %s confirmed", sorted(self._owned))

    def _group_offsets(self, partitions: set[int]) -> list[TopicPartition]:
        """On a lane of its own: the offsets the group holds for `partitions`, read by a consumer that
        never joins the group (the group's own consumer may be busy in a rebalance callback)."""
        c = Consumer(kio.consumer_config(self._client, self.app, self._consumer_extra))
        try:
            committed = c.committed(self._tps(partitions), timeout=10)
        finally:
            c.close()
        failed = [tp.error for tp in committed if tp.error is not None]
        if failed:
            raise KafkaException(failed[0])
        return [tp for tp in committed if tp.offset >= 0]

    # -- partitions ------------------------------------------------------------------------------

    def _tps(self, partitions: Iterable[int]) -> list[TopicPartition]:
        return [TopicPartition(t, p) for p in sorted(partitions) for t in self.input_topics]

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
        r = _Restore(partition=p, seek=seek)
        self._restoring[p] = r
        r.task = asyncio.get_running_loop().create_task(
            self._restore(r, after=before.task if before is not None else None), name=f"restore {p}")

    async def _restore(self, r: _Restore, after: asyncio.Task[None] | None = None) -> None:
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

    async def _restore_once(self, r: _Restore, store: Store) -> None:
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
                                trimmer=self._trimmer, steps=self._steps, step_lease_s=self._step_lease_s)
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


def _fetch(consumer: Consumer, flow: list[tuple[str, list[TopicPartition]]], most: int) -> list[Message]:
    """On the consumer lane: apply pause/resume decisions, then block for the first record (or
    50 ms) and take whatever else is already there. A plain ``consume(n, timeout)`` waits for all n
    records or the whole timeout: +50 ms per idle pickup."""
    for action, tps in flow:
        if tps:
            try:
                (consumer.pause if action == "pause" else consumer.resume)(tps)
            except KafkaException as e:  # e.g. partitions revoked meanwhile
                log.info("%s %d partitions: %s", action, len(tps), e)
    first = consumer.poll(0.05)
    if first is None:
        return []
    return [first, *consumer.consume(most - 1, 0)] if most > 1 else [first]


__all__ = ["ConfigurationError", "Engine"]
