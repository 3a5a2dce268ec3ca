"""The HTTP ingress (``processor run --ingress-port N``; docs/decisions/013): invoke any handler of
the app and complete awakeables over HTTP, so a webhook can start or finish durable work.

    POST /<service>/<handler>            invoke a service handler with the JSON body
    POST /<object>/<key>/<handler>       invoke a virtual object's (or workflow's) handler for `key`
    GET  /invocations/<id>               the result of an invocation, waiting for it
    POST /awakeables/<id>/resolve        complete an awakeable with the JSON body
    POST /awakeables/<id>/reject         fail it: body {"reason": "..."} or a JSON string

Each accepted request produces exactly one inbox command, as a ``Client`` would (it is one: a
``SyncClient`` on the ingress's own event loop thread); nothing else is written. An
``Idempotency-Key`` header becomes the invocation's idempotency key, so a retried webhook is one
invocation and gets its result again. A request waits for the result (200, the result as JSON, its
id in ``X-Invocation-Id``) unless it asks ``?wait=false`` or ``Prefer: respond-async`` (202 with the
id); a result that does not come within the timeout is a 504 carrying the id, to fetch it later from
``GET /invocations/<id>``. Bad requests get a 4xx with a JSON ``{"error": reason}`` before anything is
produced: 400 (body not JSON or not the handler's input model, a keyed handler without a key), 401
(token), 404 (no such handler, invocation or awakeable), 405, 411, 413 (body over the limit); a
handler's terminal failure is a 500 with its ``error_type``.

Access: bound to loopback by default, where no token is needed unless one is configured; beyond
loopback it refuses to start without a token. With a token, every request must carry it as
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
from confluent_kafka import KafkaException

from processor._app import App, HandlerDef, HandlerKind
from processor._client import InvocationNotFound
from processor._engine import routing
from processor._engine.commands import CommandKind
from processor._errors import ConfigurationError, ProcessorError, SerdeError, TerminalError
from processor._http import bearer_ok, check_listen, is_loopback
from processor._models import dump
from processor._serde import BytesSerde, JsonSerde
from processor._sync import SyncClient

log = logging.getLogger("processor.ingress")
RESERVED = ("awakeables", "invocations")  # first path segments that are not services
DISCARD_MAX = 16 << 20  # a refused body up to this size is read (and dropped) before the 413


@dataclass(frozen=True, slots=True, kw_only=True)
class IngressConfig:
    """Where the ingress listens, who may use it and its bounds. `port` 0 picks a free port (logged).
    `timeout_s`: how long a request waits for its result (then 504 with the invocation id); a
    request's ``?timeout=SECONDS`` may ask for less. `max_body`: the largest request body, in bytes
    (then 413); keep it below the broker's ``message.max.bytes``. `max_requests`: requests in progress
    at once (then 503)."""

    port: int
    host: str = "127.0.0.1"
    token: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0
    max_body: int = 512 * 1024
    max_requests: int = 256

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def check(self) -> None:
        check_listen("ingress", self.host, self.port, self.token, "--ingress", "PROCESSOR_INGRESS_TOKEN")
        if self.timeout_s <= 0 or self.max_body <= 0 or self.max_requests <= 0:
            raise ConfigurationError("ingress timeout, body limit and request limit must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def _json(status: int, value: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status=status, body=orjson.dumps(value) + b"\n", headers=headers or {})


def _error(status: int, message: str, **more: Any) -> Reply:
    headers = {"WWW-Authenticate": 'Bearer realm="processor"'} if status == 401 else {}
    return _json(status, {"error": message, **more}, headers)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Ingress:
    """The app's HTTP ingress, serving from its own threads until ``close``."""

    def __init__(self, app: App, config: IngressConfig, client: SyncClient, httpd: _HTTPServer) -> None:
        self.app = app
        self.config = config
        self.client = client
        self._httpd = httpd
        self._slots = threading.BoundedSemaphore(config.max_requests)
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="ingress-http", daemon=True)

    @classmethod
    def start(cls, app: App, config: IngressConfig, bootstrap_servers: str,
              kafka_config: Mapping[str, Any] | None = None) -> Ingress:
        """Listen and serve; ConfigurationError for a bad config, a reserved name or an address in use."""
        config.check()
        clash = [name for name in RESERVED if any(h.service == name for h in app.handlers.values())]
        if clash:
            raise ConfigurationError(f"the ingress reserves the path /{clash[0]}/...: rename the {clash[0]!r} "
                                     f"service of app {app.name!r} to serve it over HTTP")
        server_class = _HTTPServer6 if ":" in config.host else _HTTPServer
        try:
            httpd = server_class((config.host, config.port), _Handler)
        except OSError as e:
            raise ConfigurationError(f"ingress: cannot listen on {config.host}:{config.port}: {e}") from None
        client = SyncClient(bootstrap_servers, app.name, serde=app.config.serde, kafka_config=kafka_config)
        ingress = cls(app, config, client, httpd)
        httpd.ingress = ingress
        ingress._thread.start()
        log.info("ingress listening on http://%s:%d (%s)", config.host, ingress.port,
                 "bearer token required" if config.token else "loopback, no token")
        return ingress

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        """Stop serving and close the Client (blocking)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self.client.close()

    # -- requests --------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> Reply:
        """One request (its body None when it was not read: over the limit or of unknown length)."""
        if self.config.token and not bearer_ok(headers.get("authorization"), self.config.token):
            return _error(401, "a bearer token is required")
        if not self._slots.acquire(blocking=False):
            return _error(503, f"too many requests in progress (more than {self.config.max_requests})")
        try:
            return self._route(method, target, headers, body)
        except _BadRequest as e:
            return _error(e.status, str(e))
        except (ConfigurationError, ProcessorError) as e:  # refused by the cluster, or no inbox yet
            return _error(503, str(e))
        except KafkaException as e:
            return _error(502, f"Kafka: {e.args[0]}")
        finally:
            self._slots.release()

    def _route(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> Reply:
        url = urlsplit(target)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = dict(parse_qsl(url.query))
        if method == "GET":
            if len(parts) == 2 and parts[0] == "invocations":
                return self._await(self._checked_invocation(parts[1]), None, query)
            return _error(404, f"no such endpoint: GET {url.path} (GET /invocations/<id>; invoke with POST)")
        if method != "POST":
            return _error(405, f"{method} is not supported: POST to invoke")
        if body is None:
            raise _BadRequest(411, "a request body needs a Content-Length")
        match parts:
            case ["awakeables", awakeable_id, ("resolve" | "reject") as how]:
                return self._awakeable(awakeable_id, how, body)
            case [service, handler]:
                h = self._handler(service, handler, None)
                return self._invoke(h, None, headers, body, query)
            case [service, key, handler]:
                h = self._handler(service, handler, key)
                return self._invoke(h, key, headers, body, query)
        return _error(404, f"no such endpoint: POST {url.path} (POST /<service>/<handler> or "
                           "/<object>/<key>/<handler>)")

    def _handler(self, service: str, handler: str, key: str | None) -> HandlerDef:
        h = self.app.handler(f"{service}/{handler}")
        if h is None:
            raise _BadRequest(404, f"no handler {service}/{handler} in app {self.app.name}")
        if h.keyed and key is None:
            raise _BadRequest(400, f"{h.target} is keyed: POST /{service}/<key>/{handler}")
        if not h.keyed and key is not None:
            raise _BadRequest(404, f"{h.target} is a service handler, which has no key: POST /{service}/{handler}")
        if key == "":
            raise _BadRequest(400, "the key is empty")
        return h

    def _payload(self, h: HandlerDef, body: bytes) -> bytes:
        """The command payload of a request body: the body parsed as JSON, checked against the
        handler's input model, written by the handler's serde (a BytesSerde takes the body as is)."""
        serde = h.input_serde or self.app.config.serde
        if isinstance(serde, BytesSerde):
            return body
        try:
            value = orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError as e:
            raise _BadRequest(400, f"the body is not JSON: {e}") from None
        try:
            h.input_shape.load(value)
            return body if isinstance(serde, JsonSerde) and body.strip() else serde.serialize(value)
        except SerdeError as e:
            raise _BadRequest(400, f"the body is not an input of {h.target}: {e}") from None

    def _invoke(self, h: HandlerDef, key: str | None, headers: Mapping[str, str], body: bytes,
                query: Mapping[str, str]) -> Reply:
        payload = self._payload(h, body)
        idempotency_key = headers.get("idempotency-key") or None
        client = self.client.client
        if h.kind is HandlerKind.WORKFLOW_RUN:
            assert key is not None
            inv, send = self.client._run(client._workflow_command(h.service, key, payload))
        else:
            inv, send = self.client._run(client._command(h.target, payload, key, idempotency_key))
        respond_async = query.get("wait", "true").lower() in ("false", "0", "no") or \
            "respond-async" in headers.get("prefer", "")
        if respond_async:
            self.client._run(_sent(send))
            return _json(202, {"invocation_id": inv}, {"X-Invocation-Id": inv})
        return self._await(inv, send, query)

    def _checked_invocation(self, invocation_id: str) -> str:
        try:
            p = routing.partition_of(invocation_id)
        except ValueError as e:
            raise _BadRequest(400, str(e)) from None
        if p >= self.client._run(self.client.client._partition_count()):
            raise _BadRequest(404, f"no invocation {invocation_id} in app {self.app.name}")
        return invocation_id

    def _await(self, inv: str, send: Callable[[], Awaitable[None]] | None, query: Mapping[str, str]) -> Reply:
        client = self.client.client
        try:
            timeout = min(float(query.get("timeout", self.config.timeout_s)), self.config.timeout_s)
        except ValueError:
            raise _BadRequest(400, f"timeout must be a number of seconds, got {query['timeout']!r}") from None
        if timeout <= 0:
            raise _BadRequest(400, "timeout must be positive")
        if send is None:
            async def attach() -> None:
                await client._send(routing.partition_of(inv), inv, CommandKind.ATTACH, invocation_id=inv)
            send = attach
        try:
            raw = self.client._run(client._wait_raw(inv, send, timedelta(seconds=timeout)))
        except TimeoutError:
            return _json(504, {"error": f"no result within {timeout:g}s: GET /invocations/{inv} later",
                               "invocation_id": inv}, {"X-Invocation-Id": inv})
        except InvocationNotFound as e:
            return _json(404, {"error": str(e), "invocation_id": inv}, {"X-Invocation-Id": inv})
        except TerminalError as e:
            return _json(500, {"error": e.message, "error_type": e.error_type, "invocation_id": inv},
                         {"X-Invocation-Id": inv})
        return Reply(status=200, body=self._result_json(raw), headers={"X-Invocation-Id": inv})

    def _result_json(self, raw: bytes | None) -> bytes:
        if raw is None:
            return b"null\n"
        if isinstance(self.app.config.serde, JsonSerde):
            return raw + b"\n"
        value = self.app.config.serde.deserialize(raw)
        if isinstance(value, bytes):
            return orjson.dumps(value.decode("utf-8", errors="replace")) + b"\n"
        return orjson.dumps(dump(value)) + b"\n"

    def _awakeable(self, awakeable_id: str, how: str, body: bytes) -> Reply:
        try:
            inv, _ = routing.parse_awakeable_id(awakeable_id)
            self._checked_invocation(inv)
        except ValueError as e:
            raise _BadRequest(400, str(e)) from None
        try:
            value = orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError as e:
            raise _BadRequest(400, f"the body is not JSON: {e}") from None
        client = self.client.client
        if how == "resolve":
            self.client._run(client.resolve_awakeable(awakeable_id, value))
            return _json(202, {"awakeable_id": awakeable_id, "resolved": True})
        reason = value.get("reason") if isinstance(value, dict) else value
        if not isinstance(reason, str) or not reason:
            raise _BadRequest(400, 'a rejection needs a reason: {"reason": "..."} or a JSON string')
        self.client._run(client.reject_awakeable(awakeable_id, reason))
        return _json(202, {"awakeable_id": awakeable_id, "rejected": True})


async def _sent(send: Callable[[], Awaitable[None]]) -> None:
    await send()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    ingress: Ingress


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "processor-ingress"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve(read=False)

    def do_POST(self) -> None:
        self._serve(read=True)

    def do_PUT(self) -> None:
        self._serve(read=False)

    def do_DELETE(self) -> None:
        self._serve(read=False)

    def _serve(self, *, read: bool) -> None:
        ingress = self.server.ingress
        headers = {k.lower(): v for k, v in self.headers.items()}
        body: bytes | None = None
        try:
            length = int(headers.get("content-length", "-1"))
        except ValueError:
            length = -1
        if "chunked" in headers.get("transfer-encoding", "").lower():
            length = -1
        try:
            if length > ingress.config.max_body:
                self._discard(length)
                reply = _error(413, f"the body has {length} bytes, over the limit of {ingress.config.max_body}")
            else:
                if length >= 0:
                    body = self.rfile.read(length)
                elif not read:
                    body = b""
                else:
                    self.close_connection = True
                reply = ingress.handle(self.command, self.path, headers, body)
            self._reply(reply)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _discard(self, length: int) -> None:
        """Read a refused body (so the client, still sending it, reads the 413) unless it is huge."""
        self.close_connection = True
        if length > DISCARD_MAX:
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                return
            length -= len(chunk)

    def _reply(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(reply.body)
