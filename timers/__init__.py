"""The timers layer: durable timer rows in partition state, with only a near window in memory
(``index``), and what each kind of timer is for and how it fires (``kinds``)."""

from __future__ import annotations

from processor.timers.index import Timer, TimerIndex
from processor.timers.kinds import Fired, TimerKind, decode_timer, encode_timer, fire

__all__ = ["Fired", "Timer", "TimerIndex", "TimerKind", "decode_timer", "encode_timer", "fire"]
