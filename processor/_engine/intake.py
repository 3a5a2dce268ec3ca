"""Records in: what a partition worker does with a consumed record — drop it when delivered again,
hold it back while its key is busy, forward it to its key's owner, dead-letter what cannot run,
and admit the rest as invocations. Mixed into ``PartitionWorker``; runs on the event loop.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from processor._app import App, Binding, HandlerDef, HandlerKind
from processor._engine.core import invocation_id_for_record
from processor._engine.records import InRecord, InvocationRow, OutRecord, Status
from processor._engine.stats import PartitionStats

if TYPE_CHECKING:
    from processor._engine.invocation import InvocationRuntime

log = logging.getLogger("processor.partition")

MAX_KEY_QUEUE = 1  # an exclusive key with a running invocation: later input is held back
HOLD_MAX_S = 1.0   # ... for this long at most


class Intake:
    """Mixed into ``PartitionWorker``: routing consumed records."""

    app: App
    partition: int
    stats: PartitionStats
    runtimes: dict[str, InvocationRuntime]
    redelivered: int
    draining: bool
    _queues: dict[tuple[str, str], deque[str]]
    _queued_rows: dict[str, InvocationRow]
    _held: deque[tuple[InRecord, Binding]]
    _held_since: float
    _positions: dict[str, int]
    _received: dict[str, int]
    _outputs: list[OutRecord]
    _on_work: Callable[[], None]

    if TYPE_CHECKING:
        def now_ms(self) -> int: ...
        def forward_if_foreign(self, msg: InRecord, binding: Binding) -> bool: ...
        def callee_id(self, h: HandlerDef, key: str | None, seed: tuple[str, ...]) -> tuple[str, int]: ...
        def _row(self, invocation_id: str) -> InvocationRow | None: ...
        def on_command(self, msg: InRecord) -> None: ...
        def create(self, row: InvocationRow, h: HandlerDef, *, fresh: bool = True, eager: bool = False,
                   decoded: tuple[Any] | None = None) -> None: ...

    def on_input(self, msg: InRecord, binding: Binding) -> None:
        """Route an input record — or hold it (and every later one) back while its key has an
        invocation running: an invocation still queued at a seal must be saved, a held record costs
        nothing and its offset is simply not committed yet. A partition holding input is paused."""
        if self._delivered_again(msg):
            return
        if self._held or self._key_queue_full(msg, binding):
            if not self._held:
                self._held_since = time.monotonic()
            self._held.append((msg, binding))
            return
        self._route_input(msg, binding)

    def _route_input(self, msg: InRecord, binding: Binding) -> None:
        self._positions[msg.topic] = msg.offset + 1
        self._on_work()
        if not self.forward_if_foreign(msg, binding):
            self.admit(msg, binding)

    def _key_queue_full(self, msg: InRecord, binding: Binding) -> bool:
        h = binding.handler
        if not h.kind.exclusive or msg.key is None:
            return False
        try:
            q = self._queues.get((h.service, msg.key.decode()))
        except UnicodeDecodeError:
            return False
        if q is None or len(q) < MAX_KEY_QUEUE:
            return False
        # Hold only behind an invocation that is running and not waiting on a durable wait: one that
        # sleeps, waits for a call or an awakeable, backs off or is paused may take hours: queue.
        rt = self.runtimes.get(q[0])
        return rt is not None and not rt.waits.pending

    def _route_stale_held(self) -> None:
        """Held input is an optimization with a time bound: after HOLD_MAX_S (a step body running
        long), route what is held, queueing behind busy keys — the partition never stalls longer."""
        if self._held and not self.draining and time.monotonic() - self._held_since > HOLD_MAX_S:
            held, self._held = self._held, deque()
            for msg, binding in held:
                self._route_input(msg, binding)

    def route_held(self) -> None:
        """Route held input up to the first record whose key is still busy (not while draining)."""
        while self._held and not self.draining:
            msg, binding = self._held[0]
            if self._key_queue_full(msg, binding):
                return
            self._held.popleft()
            self._route_input(msg, binding)

    def holding(self) -> bool:
        """Input records are held back (the engine pauses this partition's input meanwhile)."""
        return bool(self._held)

    def admit(self, msg: InRecord, binding: Binding) -> None:
        """Start the invocation bound record `msg` asks for, or dead-letter it, on the partition that
        owns its key: where it landed, or where it was forwarded to (its id derives from where it landed)."""
        topic, offset = msg.topic, msg.offset
        h = binding.handler
        key = msg.key
        try:
            key_str = key.decode() if key is not None else None
        except UnicodeDecodeError:
            self.dead_letter(msg, "the record key is not UTF-8", "InvalidKey")
            return
        if h.keyed and key_str is None:
            self.dead_letter(msg, f"{h.target} is a virtual-object handler and the record has no key", "MissingKey")
            return
        value = msg.value
        if value is None:
            self.dead_letter(msg, "the record has no value (a tombstone)", "MissingValue")
            return
        try:
            decoded = h.input_shape.load(binding.serde.deserialize(value))
        except Exception as e:
            self.dead_letter(msg, f"value rejected by {type(binding.serde).__name__}: {e}", type(e).__name__)
            return
        if h.kind is HandlerKind.WORKFLOW_RUN:  # once per workflow key, whatever record asks for it
            assert key_str is not None
            inv_id, _ = self.callee_id(h, key_str, ())
            if self._row(inv_id) is not None:
                return  # this workflow key already started its run
        else:
            inv_id = invocation_id_for_record(topic, msg.partition, offset, owner=self.partition)
            # Only a cycle that commits the record's offset (or its forward's) can save its
            # invocation, and records are consumed from the committed offset: one is in memory or
            # nowhere. (No store read per record: it releases the GIL.)
            if inv_id in self.runtimes or inv_id in self._queued_rows:
                return
        # Built in the status it gets now (queued behind its key, or running): a row is a big
        # dataclass, and this is the per-record path.
        queues = h.kind.exclusive and key_str is not None and bool(self._queues.get((h.service, key_str)))
        self.create(InvocationRow(
            id=inv_id, service=h.service, handler=h.name, key=key_str if h.keyed else None,
            status=Status.QUEUED if queues else Status.RUNNING, input=value, created_ms=self.now_ms(),
            input_headers=dict(msg.headers),
            source_topic=topic, source_partition=msg.partition, source_offset=offset), h, fresh=True, eager=True,
            decoded=(decoded,))

    def _delivered_again(self, msg: InRecord) -> bool:
        """Whether `msg` is below what this partition already received of its topic: the consumer
        delivered it again (seen while the broker shut down: librdkafka fetched a partition from
        its start again). Routing it again would process it twice and move the committed offset
        back, so it is dropped: a partition's records are taken once, in offset order, from the
        committed offset on (a rewind after an abort starts a new worker or resets this one)."""
        expected = self._received.get(msg.topic)
        if expected is not None and msg.offset < expected:
            self.redelivered += 1
            if self.redelivered == 1 or self.redelivered % 1000 == 0:
                log.warning("partition %d: %s@%d delivered again (already received up to %d): dropped "
                            "(%d so far)", self.partition, msg.topic, msg.offset, expected - 1, self.redelivered)
            return True
        self._received[msg.topic] = msg.offset + 1
        return False

    def on_inbox(self, msg: InRecord) -> None:
        if self._delivered_again(msg):
            return
        self._positions[msg.topic] = msg.offset + 1
        self._on_work()
        self.on_command(msg)

    def dead_letter(self, msg: InRecord, reason: str, error_class: str) -> None:
        """Send `msg` to the app's DLQ, committed with its offset; the partition keeps flowing."""
        self.stats.dead_lettered(error_class)
        log.warning("partition %d: %s@%d to %s: %s", self.partition, msg.topic, msg.offset,
                    self.app.dlq_topic, reason)
        headers = [*msg.headers,
                   ("processor.error", reason.encode()), ("processor.error.class", error_class.encode()),
                   ("processor.source.topic", msg.topic.encode()),
                   ("processor.source.partition", str(msg.partition).encode()),
                   ("processor.source.offset", str(msg.offset).encode())]
        self._outputs.append(OutRecord(topic=self.app.dlq_topic, partition=self.partition, key=msg.key,
                                       value=msg.value, headers=headers))
        self._on_work()
