"""The timers layer: durable timer rows in partition state, with only a near window in memory."""

from __future__ import annotations

from timers.index import Timer, TimerIndex

__all__ = ["Timer", "TimerIndex"]
