"""Kafka-native exactly-once event processor with durable handlers.

Users write ``import processor as p``; everything not named in ``__all__`` is private.
"""

from __future__ import annotations

from processor._app import App, HandlerRef, ObjectDefinition, ServiceDefinition, WorkflowDefinition, ref
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
    UnknownTopicError,
)
from processor._futures import DurableFuture, gather, select
from processor._limits import Rate
from processor._retry import OnExhausted, RetryPolicy
from processor._schedule import CatchUp
from processor._serde import AvroSerde, BytesSerde, JsonSerde, Serde
from processor._sync import SyncClient

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
    "HandlerRef",
    "InvocationCancelled",
    "InvocationKilled",
    "InvocationNotFound",
    "JsonSerde",
    "NondeterminismError",
    "ObjectContext",
    "ObjectDefinition",
    "ObjectSharedContext",
    "OnExhausted",
    "ProcessorError",
    "Rate",
    "RetryPolicy",
    "Serde",
    "SerdeError",
    "ServiceDefinition",
    "StepFailedError",
    "StepInfo",
    "SyncClient",
    "TerminalError",
    "UnknownTopicError",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowSharedContext",
    "current_step",
    "gather",
    "ref",
    "select",
]
