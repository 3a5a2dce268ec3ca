"""Kafka-native exactly-once event processor with durable handlers.

Users write ``import processor as p``; everything not named in ``__all__`` is private.
"""

from __future__ import annotations

__all__: list[str] = []
