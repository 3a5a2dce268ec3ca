"""Kafka-native exactly-once event processor with durable handlers.

Users write ``import processor as p``; everything not named in ``__all__`` is private.
"""

from __future__ import annotations

from processor._app import App, ObjectDefinition, ServiceDefinition
from processor._context import Context, ObjectContext, ObjectSharedContext, StepInfo, current_step
from processor._errors import (
    ConfigurationError,
    NondeterminismError,
    ProcessorError,
    SerdeError,
    StepFailedError,
    TerminalError,
)
from processor._retry import RetryPolicy
from processor._serde import AvroSerde, BytesSerde, JsonSerde, Serde

__all__ = [
    "App",
    "AvroSerde",
    "BytesSerde",
    "ConfigurationError",
    "Context",
    "JsonSerde",
    "NondeterminismError",
    "ObjectContext",
    "ObjectDefinition",
    "ObjectSharedContext",
    "ProcessorError",
    "RetryPolicy",
    "Serde",
    "SerdeError",
    "ServiceDefinition",
    "StepFailedError",
    "StepInfo",
    "TerminalError",
    "current_step",
]
