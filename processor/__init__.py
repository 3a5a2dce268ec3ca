"""Kafka-native exactly-once event processor with durable handlers.

Users write ``import processor as p``; everything not named in ``__all__`` is private.
"""

from __future__ import annotations

from processor._app import App, ObjectDefinition, ServiceDefinition, WorkflowDefinition
from processor._client import Client, InvocationNotFound
from processor._context import (
    Context,
    DurablePromise,
    ObjectContext,
    ObjectSharedContext,
    StepInfo,
    WorkflowContext,
    WorkflowSharedContext,
    current_step,
)
from processor._errors import (
    ConfigurationError,
    InvocationCancelled,
    InvocationKilled,
    NondeterminismError,
    ProcessorError,
    SerdeError,
    StepFailedError,
    TerminalError,
)
from processor._futures import DurableFuture, gather, select
from processor._retry import RetryPolicy
from processor._schedule import CatchUp
from processor._serde import AvroSerde, BytesSerde, JsonSerde, Serde

__all__ = [
    "App",
    "AvroSerde",
    "BytesSerde",
    "CatchUp",
    "Client",
    "ConfigurationError",
    "Context",
    "DurableFuture",
    "DurablePromise",
    "InvocationCancelled",
    "InvocationKilled",
    "InvocationNotFound",
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
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowSharedContext",
    "current_step",
    "gather",
    "select",
]
