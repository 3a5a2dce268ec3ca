"""The synchronous Client, for scripts: the async Client on an event loop of its own thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import timedelta
from typing import Any, TypeVar, overload

from processor._app import HandlerRef, Target
from processor._client import Client
from processor._errors import ProcessorError
from processor._serde import Serde

T = TypeVar("T")
In = TypeVar("In")
Out = TypeVar("Out")


class SyncClient:
    """``Client`` with blocking methods: ``with p.SyncClient(servers, app) as c: c.call(...)``. Its
    calls may come from any thread; they run on one background event loop, so a SyncClient keeps one
    results reader like the async Client. ``close`` (or leaving the ``with``) stops the loop."""

    def __init__(self, bootstrap_servers: str, app: str, *, serde: Serde[Any] | None = None,
                 kafka_config: Mapping[str, Any] | None = None) -> None:
        self.client = Client(bootstrap_servers, app, serde=serde, kafka_config=kafka_config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"sync-client-{app}", daemon=True)
        self._thread.start()
        self._closed = False

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.client.close()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise ProcessorError("the SyncClient is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @overload
    def invoke(self, target: Callable[[Any, In], Awaitable[Any]] | HandlerRef[In, Any], arg: In, *,
               key: str | None = None, idempotency_key: str | None = None) -> str: ...
    @overload
    def invoke(self, target: str, arg: Any, *, key: str | None = None, idempotency_key: str | None = None) -> str: ...
    def invoke(self, target: Target, arg: Any, *, key: str | None = None, idempotency_key: str | None = None) -> str:
        """``Client.invoke``: start `target`, return the invocation id."""
        return self._run(self.client.invoke(target, arg, key=key, idempotency_key=idempotency_key))

    @overload
    def call(self, target: Callable[[Any, In], Awaitable[Out]] | HandlerRef[In, Out], arg: In, *,
             key: str | None = None, idempotency_key: str | None = None, timeout: timedelta = ...) -> Out: ...
    @overload
    def call(self, target: str, arg: Any, *, key: str | None = None, idempotency_key: str | None = None,
             timeout: timedelta = ...) -> Any: ...
    def call(self, target: Target, arg: Any, *, key: str | None = None, idempotency_key: str | None = None,
             timeout: timedelta = timedelta(minutes=5)) -> Any:
        """``Client.call``: invoke `target` and wait for its result."""
        return self._run(self.client.call(target, arg, key=key, idempotency_key=idempotency_key, timeout=timeout))

    def result(self, invocation_id: str, *, timeout: timedelta = timedelta(minutes=5)) -> Any:
        """``Client.result``: the result of an invocation, waiting for it."""
        return self._run(self.client.result(invocation_id, timeout=timeout))

    def submit_workflow(self, workflow: str, key: str, arg: Any) -> str:
        return self._run(self.client.submit_workflow(workflow, key, arg))

    def workflow_output(self, workflow: str, key: str, *, timeout: timedelta = timedelta(minutes=5)) -> Any:
        return self._run(self.client.workflow_output(workflow, key, timeout=timeout))

    def resolve_awakeable(self, awakeable_id: str, value: Any) -> None:
        self._run(self.client.resolve_awakeable(awakeable_id, value))

    def reject_awakeable(self, awakeable_id: str, reason: str) -> None:
        self._run(self.client.reject_awakeable(awakeable_id, reason))

    def cancel(self, invocation_id: str) -> None:
        self._run(self.client.cancel(invocation_id))

    def kill(self, invocation_id: str) -> None:
        self._run(self.client.kill(invocation_id))
