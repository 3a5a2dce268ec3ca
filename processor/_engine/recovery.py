"""Recovery: one path for whatever went wrong — a transaction that failed, timed out or hung, a
fence, a stall of this process. The engine drops every partition's in-memory state, replaces its
producers, confirms with an empty fenced transaction that it still owns its partitions (or waits
for the group to hand out new ones), and brings each partition back as an assignment would. Mixed
into ``Engine``; runs on the event loop. The fencing argument is in docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from processor._app import App
from processor._engine import kafka as kio
from processor._engine import txn
from processor._engine.lanes import Deadline, Lane, Stuck
from processor._engine.ownership import Restore
from processor._engine.partition import PartitionWorker
from processor._errors import ConfigurationError

log = logging.getLogger("processor.engine")


class Recovery:
    """Mixed into ``Engine``: rebuilding its partitions from their last commit."""

    app: App
    workers: dict[int, PartitionWorker]
    rebuilds: int
    _epoch: int
    _rebuilding: bool
    _reconfirm: bool
    _rebuild_task: asyncio.Task[None] | None
    _owned: set[int]
    _assign_generation: int
    _restored: dict[int, Restore]
    _commit_lock: asyncio.Lock
    _flow: list[tuple[str, list[TopicPartition]]]
    _producers: list[Producer | None]
    _producer_lanes: list[Lane]
    _turn: int
    _group_metadata: object | None
    _stop: asyncio.Event
    _work: asyncio.Event
    _client: dict[str, Any]
    _consumer_extra: dict[str, Any]

    if TYPE_CHECKING:
        @property
        def _txn_s(self) -> float: ...
        def _tps(self, partitions: Iterable[int]) -> list[TopicPartition]: ...
        def _lose_producer(self, slot: int) -> None: ...
        async def _start_producer(self, slot: int) -> None: ...
        def _refuse(self, why: str) -> None: ...
        def _start_restore(self, p: int, *, seek: bool) -> None: ...
        async def _settle_failed(self, slot: int, e: txn.TxnFailed, deadline: Deadline | None, *,
                                 age_s: float, quiet: bool = False) -> None: ...

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
