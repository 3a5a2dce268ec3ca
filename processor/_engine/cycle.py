"""One commit cycle, step by step (docs/architecture.md, "The commit cycle").

The engine decides *when* a cycle runs (after the linger and the drain) and what to do when a step
fails (abort, replace producers, rebuild); a :class:`Cycle` is what one cycle does, in order:

1. ``seal``     every partition with work hands over its slice (overlay, outputs, offsets, releases),
                and the offsets to commit with the group metadata are fixed (``fence_offsets``);
2. ``transact`` one Kafka transaction: changelog records, outputs, offsets, commit (``txn.commit``,
                blocking: run on a producer's lane);
3. ``apply``    the committed overlays into LMDB (blocking: run on the apply thread), or a restore
                of the changelog tail where the store is not where this cycle's records follow;
4. ``release``  each partition drops its sealed layer and releases what waited for this commit.

Steps 2 and 3 touch no partition worker: they may run off the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import TopicPartition

from processor._engine import txn
from processor._engine.metrics import CommitTimings
from processor._engine.partition import CycleSlice, PartitionWorker
from processor._engine.ports import TransactionalProducer
from processor.state.store import Store

log = logging.getLogger("processor.engine")


@dataclass(slots=True)
class Cycle:
    workers: list[PartitionWorker]
    slices: list[CycleSlice]
    offsets: list[TopicPartition]  # what the transaction commits with the group metadata

    # -- 1 ---------------------------------------------------------------------------------------

    @classmethod
    def seal(cls, workers: list[PartitionWorker], inbox: str) -> Cycle:
        slices = [w.seal() for w in workers]
        return cls(workers=workers, slices=slices, offsets=fence_offsets(workers, slices, inbox))

    # -- 2 ---------------------------------------------------------------------------------------

    def transact(self, producer: TransactionalProducer, *, changelog: str, group: object,
                 timings: CommitTimings, flush_timeout: float) -> txn.Written:
        """Raises :class:`txn.TxnFailed` (the transaction is then open or failed: the engine aborts
        it or replaces the producer)."""
        return txn.commit(producer, changelog=changelog, slices=self.slices, offsets=self.offsets, group=group,
                          timings=timings, flush_timeout=flush_timeout)

    # -- 3 ---------------------------------------------------------------------------------------

    def apply(self, written: txn.Written, stores: Mapping[int, Store], *, gap_allowed: int,
              read_tail: Callable[[Store, int], int]) -> set[int]:
        """Write each overlay into its store with the changelog offset after its last record — but
        only where those records follow the store's offset directly (at most `gap_allowed` commit
        markers in between, one per producer). Anything else means records the store never saw:
        `read_tail(store, partition)` reads them from the changelog instead and returns how many
        it applied. Returns the partitions where that found records of another writer."""
        foreign: set[int] = set()
        for s in self.slices:
            if not len(s.overlay):
                continue
            store, p = stores[s.partition], s.partition
            start, first = store.changelog_offset(), written.first[p]
            if 0 <= first - start <= gap_allowed:
                store.apply(s.overlay.items(), written.end[p])
                continue
            log.warning("partition %d: this cycle's changelog records start at %d but the store is at %d; "
                        "reading the changelog tail instead of applying", p, first, start)
            if read_tail(store, p) > len(s.overlay):
                foreign.add(p)
        return foreign

    # -- 4 ---------------------------------------------------------------------------------------

    def release(self, live: Mapping[int, PartitionWorker]) -> None:
        """The cycle is in Kafka and LMDB: each partition still live with the worker that sealed it
        (not dropped meanwhile by a release past its deadline) forgets its layer and releases."""
        for w, s in zip(self.workers, self.slices, strict=True):
            if live.get(s.partition) is w:
                w.committed(s)


def fence_offsets(workers: Sequence[PartitionWorker], slices: Sequence[CycleSlice],
                  inbox: str) -> list[TopicPartition]:
    """The offsets a cycle commits: those it moved, else the ones the group holds (every transaction
    carries offsets with the group metadata: that is what fences a zombie, docs/architecture.md)."""
    offsets: list[TopicPartition] = []
    for w, s in zip(workers, slices, strict=True):
        moved = s.offsets or w.committed_offsets()
        offsets.extend(TopicPartition(t, s.partition, o) for t, o in moved.items())
    if not offsets:  # nothing was ever committed for these partitions: re-committing "from 0" is the same
        offsets.append(TopicPartition(inbox, slices[0].partition, 0))
    return offsets
