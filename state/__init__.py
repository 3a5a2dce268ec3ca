"""The state layer: per-partition LMDB store, its in-memory twin, uncommitted overlays and restore
from the changelog. Key layouts live in :mod:`state.keys`."""

from __future__ import annotations

from processor.state.changelog import RestoreCancelled, RestoreError, RestoreStats, restore
from processor.state.memory import MemoryStore
from processor.state.overlay import MISSING, Missing, Overlay, OverlayError, PartitionState
from processor.state.store import (
    FORMAT_VERSION,
    PartitionStore,
    Store,
    StoreClosedError,
    StoreError,
    StoreFormatError,
)

__all__ = [
    "FORMAT_VERSION",
    "MISSING",
    "MemoryStore",
    "Missing",
    "Overlay",
    "OverlayError",
    "PartitionState",
    "PartitionStore",
    "RestoreCancelled",
    "RestoreError",
    "RestoreStats",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreFormatError",
    "restore",
]
