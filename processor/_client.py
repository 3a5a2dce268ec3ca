"""The Client: talk to an app's processors from any process, with no handler code loaded.

Commands go to ``<app>.inbox`` on the partition that owns their target (ids carry it); outcomes come
back on ``<app>.results``. Values travel through a serde (JSON by default), as in the app.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

from confluent_kafka import KafkaException, Producer

from processor import _kafka_config, schemas
from processor._app import HandlerRef, Target, registered, target_shapes
from processor._engine import kafka as kio
from processor._engine import routing, schedules, tracing
from processor._engine.commands import CommandKind, InboxCommand
from processor._engine.core import Failure
from processor._errors import ConfigurationError, ProcessorError, terminal_error
from processor._models import Shape, dump
from processor._results import Results
from processor._schedule import DEFAULT_GRACE, REMOVE, CatchUp, ScheduleDef
from processor._serde import JsonSerde, Serde

In = TypeVar("In")
Out = TypeVar("Out")


class InvocationNotFound(ProcessorError):
    """The invocation does not exist (never created, or purged after its retention)."""


class Client:
    """Invoke handlers, await results, complete awakeables and cancel or kill invocations of app
    `app` through the Kafka cluster at `bootstrap_servers`.

    `kafka_config` holds librdkafka settings (security, tuning) for its clients; the file named by
    ``$PROCESSOR_KAFKA_CONFIG_FILE`` and ``PROCESSOR_KAFKA_*`` variables override them key by key
    (docs/security.md). A cluster that refuses the login or an ACL raises ConfigurationError."""

    def __init__(self, bootstrap_servers: str, app: str, *, serde: Serde[Any] | None = None,
                 kafka_config: Mapping[str, Any] | None = None) -> None:
        self.app = app
        self._bootstrap = bootstrap_servers
        self._serde: Serde[Any] = serde or JsonSerde()
        self.kafka_config = _kafka_config.resolve(_kafka_config.from_code(kafka_config, "Client(kafka_config=...)"))
        self._config = kio.client_config(bootstrap_servers, self.kafka_config)
        try:
            self._producer = Producer({**self._config, "enable.idempotence": True, "acks": "all", "linger.ms": 0})
        except KafkaException as e:
            raise ConfigurationError(f"invalid Kafka client settings: {e.args[0]}") from None
        self._partitions: int | None = None
        self._results = Results(self._config, self.results)

    @property
    def inbox(self) -> str:
        return f"{self.app}.inbox"

    @property
    def results(self) -> str:
        return f"{self.app}.results"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Deliver what was sent and stop the results reader (waits still open fail)."""
        self._producer.flush(10)
        self._results.close()

    # -- invoking ----------------------------------------------------------------------------------

    @overload
    async def invoke(self, target: Callable[[Any, In], Awaitable[Any]] | HandlerRef[In, Any], arg: In, *,
                     key: str | None = None, idempotency_key: str | None = None) -> str: ...
    @overload
    async def invoke(self, target: str, arg: Any, *, key: str | None = None,
                     idempotency_key: str | None = None) -> str: ...
    async def invoke(self, target: Target, arg: Any, *, key: str | None = None,
                     idempotency_key: str | None = None) -> str:
        """Start `target` (a handler function, ``p.ref(...)`` or ``"service/handler"``) with `arg` (and
        `key` for objects and workflows); returns the invocation id. The same `idempotency_key` (per
        target and key) names the same invocation: it runs once, and its result is returned again
        while it is retained."""
        inv, send, _ = await self._invocation(target, arg, key, idempotency_key)
        await send()
        return inv

    @overload
    async def call(self, target: Callable[[Any, In], Awaitable[Out]] | HandlerRef[In, Out], arg: In, *,
                   key: str | None = None, idempotency_key: str | None = None,
                   timeout: timedelta = ...) -> Out: ...
    @overload
    async def call(self, target: str, arg: Any, *, key: str | None = None, idempotency_key: str | None = None,
                   timeout: timedelta = ...) -> Any: ...
    async def call(self, target: Target, arg: Any, *, key: str | None = None, idempotency_key: str | None = None,
                   timeout: timedelta = timedelta(minutes=5)) -> Any:
        """``invoke`` and wait for the result (as the handler's output model when `target` is a handler
        function or a typed ``p.ref``). Raises TerminalError if the invocation failed or cannot run
        (unknown handler, keyed handler without `key`; ``error_type`` says which), and its subclasses
        InvocationCancelled / InvocationKilled if it was cancelled / killed."""
        inv, send, output = await self._invocation(target, arg, key, idempotency_key)
        return output.load(await self._wait(inv, send, timeout))

    async def _invocation(self, target: Target, arg: Any, key: str | None,
                          idempotency_key: str | None) -> tuple[str, Callable[[], Awaitable[None]], Shape]:
        name, _input, output = target_shapes(target)
        h = None if isinstance(target, str | HandlerRef) else registered(target)
        serde = h.input_serde if h is not None and h.input_serde is not None else self._serde
        inv, send = await self._command(name, serde.serialize(dump(arg)), key, idempotency_key)
        return inv, send, output

    async def _command(self, target: str, payload: bytes, key: str | None,
                       idempotency_key: str | None) -> tuple[str, Callable[[], Awaitable[None]]]:
        """The id of an invocation of `target` with the serialized `payload`, and how to send it."""
        service, _, handler = target.partition("/")
        if not service or not handler:
            raise ValueError(f"target must be 'service/handler', got {target!r}")
        seed = idempotency_key if idempotency_key is not None else uuid.uuid4().hex
        p = routing.target_partition(key, f"client\0{target}\0{seed}", await self._partition_count())
        inv = routing.invocation_id(p, "client", target, key or "", seed)
        headers = tracing.current_headers()  # the caller's trace goes on in the invocation

        async def send() -> None:
            await self._send(p, key or inv, CommandKind.INVOKE, invocation_id=inv, service=service, handler=handler,
                             key=key, payload=payload, idempotency_key=idempotency_key, notify=True,
                             headers=headers)
        return inv, send

    async def submit_workflow(self, workflow: str, key: str, arg: Any) -> str:
        """Start workflow `workflow` for `key` (its run happens once per key); returns its id."""
        inv, send = await self._workflow_command(workflow, key, self._serde.serialize(dump(arg)))
        await send()
        return inv

    async def _workflow_command(self, workflow: str, key: str,
                                payload: bytes) -> tuple[str, Callable[[], Awaitable[None]]]:
        p = routing.target_partition(key, "", await self._partition_count())
        inv = routing.invocation_id(p, "workflow", workflow, key)

        async def send() -> None:
            await self._send(p, key, CommandKind.INVOKE, invocation_id=inv, service=workflow, handler="run", key=key,
                             payload=payload, notify=True)
        return inv, send

    async def workflow_output(self, workflow: str, key: str, *,
                              timeout: timedelta = timedelta(minutes=5)) -> Any:
        """The result of workflow `workflow`'s run for `key`, waiting for it if still running."""
        p = routing.target_partition(key, "", await self._partition_count())
        return await self.result(routing.invocation_id(p, "workflow", workflow, key), timeout=timeout)

    async def result(self, invocation_id: str, *, timeout: timedelta = timedelta(minutes=5)) -> Any:
        """Attach to an invocation and return its result once it finished (TerminalError if it failed,
        InvocationCancelled / InvocationKilled if it was cancelled / killed, InvocationNotFound if
        there is no such invocation)."""
        await self._partition_count()  # a refusal fails here, with its reason
        p = routing.partition_of(invocation_id)

        async def attach() -> None:
            await self._send(p, invocation_id, CommandKind.ATTACH, invocation_id=invocation_id)
        return await self._wait(invocation_id, attach, timeout)

    # -- schedules -----------------------------------------------------------------------------------

    async def schedule(self, name: str, target: str, payload: Any = None, *, cron: str | None = None,
                       every: timedelta | None = None, tz: str = "UTC", key: str | None = None,
                       catch_up: CatchUp = CatchUp.LATEST, grace: timedelta = DEFAULT_GRACE,
                       timeout: timedelta = timedelta(minutes=1)) -> datetime:
        """Create or replace schedule `name` (as ``App.schedule``, with `target` as
        ``"service/handler"``); returns its first tick. Ensuring the definition that already runs
        changes nothing. Raises ConfigurationError for a bad definition and TerminalError when the
        app has no such handler (or it is keyed and `key` is missing)."""
        d = ScheduleDef.build(name, target, payload, cron=cron, every=every, tz=tz, key=key, catch_up=catch_up,
                              grace=grace)
        p, cmd = schedules.ensure_command(d, await self._partition_count(), notify=True)
        assert cmd.invocation_id is not None

        async def send() -> None:
            await self._send_command(p, d.name, cmd)
        first: str = await self._wait(cmd.invocation_id, send, timeout)
        return datetime.fromisoformat(first)

    async def unschedule(self, name: str, *, timeout: timedelta = timedelta(minutes=1)) -> bool:
        """Remove schedule `name`: once this returns it sends no more ticks (invocations of ticks it
        sent before still run). Returns whether it existed."""
        return bool(await self.call(REMOVE, None, key=name, timeout=timeout))

    # -- completing and stopping ---------------------------------------------------------------------

    async def resolve_awakeable(self, awakeable_id: str, value: Any) -> None:
        """Complete an awakeable with `value` (JSON)."""
        inv, _ = routing.parse_awakeable_id(awakeable_id)
        await self._send(routing.partition_of(inv), inv, CommandKind.RESOLVE_AWAKEABLE, target_id=awakeable_id,
                         payload=JsonSerde().serialize(value))

    async def reject_awakeable(self, awakeable_id: str, reason: str) -> None:
        """Fail an awakeable: the awaiting handler gets TerminalError(reason)."""
        inv, _ = routing.parse_awakeable_id(awakeable_id)
        await self._send(routing.partition_of(inv), inv, CommandKind.REJECT_AWAKEABLE, target_id=awakeable_id,
                         failure=Failure(type="AwakeableRejected", message=reason))

    async def cancel(self, invocation_id: str) -> None:
        """Cancel: the handler gets InvocationCancelled at its next durable await (so compensation
        code runs), and calls it awaits are cancelled too."""
        await self._send(routing.partition_of(invocation_id), invocation_id, CommandKind.CANCEL,
                         invocation_id=invocation_id)

    async def kill(self, invocation_id: str) -> None:
        """Stop an invocation at once, with no compensation; it fails with 'Killed'."""
        await self._send(routing.partition_of(invocation_id), invocation_id, CommandKind.KILL,
                         invocation_id=invocation_id)

    # -- plumbing ------------------------------------------------------------------------------------

    async def _partition_count(self) -> int:
        """The inbox's partition count, read once: the first thing every request does, so a cluster
        that refuses us fails it at once with the reason."""
        if self._partitions is None:
            def count() -> int:
                md = kio.connect(self._config).list_topics(self.inbox, timeout=15)
                t = md.topics.get(self.inbox)
                if t is not None and t.error is not None and kio.is_refusal(t.error.code()):
                    raise ConfigurationError(kio.not_authorized(t.error.str(), f"describing {self.inbox}"))
                if t is None or t.error is not None or not t.partitions:
                    raise ProcessorError(f"app {self.app!r} has no inbox topic {self.inbox!r}: is a processor "
                                         "of it running (or did one ever run) on this cluster?")
                return len(t.partitions)
            self._partitions = await asyncio.to_thread(count)
        return self._partitions

    async def _send(self, partition: int, record_key: str, kind: CommandKind, **fields: Any) -> None:
        await self._send_command(partition, record_key, InboxCommand(kind=kind, **fields))

    async def _send_command(self, partition: int, record_key: str, command: InboxCommand) -> None:
        await self._partition_count()
        data = command.encode()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(err: Any) -> None:
            if done.done():
                return
            if err is not None and kio.is_refusal(err.code()):
                done.set_exception(ConfigurationError(kio.not_authorized(err.str(), f"writing to {self.inbox}")))
            elif err is not None:
                done.set_exception(KafkaException(err))
            else:
                done.set_result(None)

        def delivered(err: Any, _msg: Any) -> None:
            loop.call_soon_threadsafe(settle, err)

        self._producer.produce(self.inbox, key=record_key.encode(), value=data, partition=partition,
                               on_delivery=delivered)
        await asyncio.to_thread(self._producer.flush, 30)
        await asyncio.wait_for(done, 30)

    async def _wait(self, invocation_id: str, send: Callable[[], Awaitable[None]], timeout: timedelta) -> Any:
        """`send` the command that makes `invocation_id` answer and wait for its result."""
        data = await self._wait_raw(invocation_id, send, timeout)
        return None if data is None else self._serde.deserialize(data)

    async def _wait_raw(self, invocation_id: str, send: Callable[[], Awaitable[None]],
                        timeout: timedelta) -> bytes | None:
        """`send` the command that makes `invocation_id` answer and wait for its result, as the bytes its
        handler's serde wrote: the Client's one results reader (started on the first wait) is at the
        topic's end before anything is sent."""
        await asyncio.to_thread(self._results.start)
        fut = self._results.expect(invocation_id)
        try:
            await send()
            data = await asyncio.wait_for(fut, timeout.total_seconds())
        except TimeoutError:
            raise TimeoutError(f"no result for {invocation_id} within {timeout.total_seconds():.0f}s") from None
        finally:
            self._results.forget(invocation_id, fut)
        r = schemas.decode("InvocationResult", data)
        if r["status"] == "unknown":
            raise InvocationNotFound(f"no invocation {invocation_id} in app {self.app!r}")
        if r["failure"] is not None:  # InvocationCancelled, InvocationKilled or TerminalError
            raise terminal_error(r["failure"]["type"], r["failure"]["message"])
        value: bytes | None = r["value"]
        return value
