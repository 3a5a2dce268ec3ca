"""The engine: one consumer, transactional producers and the poll loop. The commit loop and its
cycles are ``committing.py``; which partitions it owns — rebalances, restores, activation, release
— is ``ownership.py``; recovery from faults (``_rebuild``) is ``recovery.py``; all three are mixed
into ``Engine``.

Threads: every consumer call runs on the consumer lane (rebalance callbacks run there and hop onto
the event loop); every transactional call runs on its producer's lane; restores run on lanes of
their own; LMDB applies run on the apply thread; synchronous step bodies on a pool. A lane whose
call outlives its deadline is abandoned with its client (``lanes.py``). Everything that touches
partition workers runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from processor._app import App
from processor._engine import kafka as kio
from processor._engine import schedules
from processor._engine.committing import Committing
from processor._engine.health import BEAT_S, Health
from processor._engine.lanes import Deadline, Lane, Stuck
from processor._engine.memtrim import Trimmer
from processor._engine.metrics import CommitTimings
from processor._engine.ownership import Ownership, Restore
from processor._engine.partition import PartitionWorker
from processor._engine.records import InRecord
from processor._engine.recovery import Recovery
from processor._engine.statedir import lock_state_dir, persisted_instance_id, record_instance_id
from processor._engine.stats import PartitionStats
from processor._engine.steps import StepLog
from processor._errors import ConfigurationError, ProcessorError
from processor._kafka_config import KafkaConfig
from processor.state.store import PartitionStore

if TYPE_CHECKING:
    from processor._admin.server import AdminConfig, AdminServer

log = logging.getLogger("processor.engine")
T = TypeVar("T")

POLL_S = 120.0          # a poll runs rebalance callbacks, which may commit and drop partitions
STALL_S = 4.0           # a freeze this long may have outlived the 6 s session: confirm ownership
SHUTDOWN_S = 30.0       # SIGTERM to exit, whatever Kafka does meanwhile
CONSUMER_FENCES_TO_GIVE_UP = 10  # consumers fenced (FENCED_INSTANCE_ID) within FENCE_WINDOW_S
FENCE_WINDOW_S = 120.0
ROUTE_TURN = 64         # records routed per event-loop turn (their handlers run as they are routed)


class Engine(Committing, Recovery, Ownership):
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
        self._restoring: dict[int, Restore] = {}
        self._restored: dict[int, Restore] = {}  # restored, waiting for the poll loop to activate them
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
        self._topics: kio.KnownTopics | None = None  # what handlers may emit to (set when it runs)
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
        return self.app.config.transaction_timeout.total_seconds()

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
        self._topics = await asyncio.to_thread(kio.known_topics, admin)
        await asyncio.to_thread(schedules.ensure_static, self._client, self.app, self.partitions_total)
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

    # -- partitions ------------------------------------------------------------------------------

    def _tps(self, partitions: Iterable[int]) -> list[TopicPartition]:
        return [TopicPartition(t, p) for p in sorted(partitions) for t in self.input_topics]


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
