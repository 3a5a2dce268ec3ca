"""The admin endpoint of one engine: ``/healthz``, ``/readyz``, ``/metrics`` and a JSON API over the
partitions the instance owns, with actions (cancel, kill, purge, retry). See docs/operate.md.

The standard library's ``ThreadingHTTPServer`` serves it from daemon threads, so ``/healthz``
answers even when the event loop is stuck (that is one thing it reports). Everything that reads
engine state runs ON the event loop (``on_loop``), bounded by a timeout: a loop that does not answer
in time gets a 503 "engine busy". Actions never touch a store: they produce the inbox command a
``Client`` would (``processor/_engine/commands.py``), which the owning partition applies exactly once.
``/api/instances`` lists the app's live instances and ``/api/instances/<id>/api/...`` forwards to one
of them (``processor/_admin/peers.py``), so the web UI reaches the whole app through one endpoint.

Access: bound to loopback (the default, 127.0.0.1), reads need no token; bound beyond it, the
endpoint refuses to start without a bearer token and every request but the probes must carry it.
Actions always need the token; without it a request gets 401 and nothing is produced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from processor._admin import api, peers, ui
from processor._admin.metrics import exposition, registry
from processor._admin.registry import RegistryPublisher
from processor._engine import kafka as kio
from processor._engine.commands import CommandKind, InboxCommand
from processor._errors import ConfigurationError
from processor._http import bearer_ok, check_listen, is_loopback

if TYPE_CHECKING:
    from processor._engine.engine import Engine

log = logging.getLogger("processor.admin")
T = TypeVar("T")

ACTIONS = {"cancel": CommandKind.CANCEL, "kill": CommandKind.KILL, "purge": CommandKind.PURGE,
           "retry": CommandKind.RETRY}
DEFAULT_STALL_S = 60.0  # > a transaction's deadline (10 s) + its abort (10 s) + a revoke's commit (20 s)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """Where the admin endpoint listens and who may use it.

    `port` 0 picks a free port (logged). `token`: the bearer token actions always need, and every
    request but ``/healthz`` and ``/readyz`` needs when `host` is beyond loopback. `stall_s`: how long
    the event loop may not run, or the commit loop have work without finishing a cycle, before
    ``/healthz`` fails. `loop_timeout_s`: how long a request waits for the event loop (then 503).
    `forward_timeout_s`: how long a request forwarded to another instance waits for it (then 504)."""

    port: int
    host: str = "127.0.0.1"
    token: str | None = None
    stall_s: float = DEFAULT_STALL_S
    loop_timeout_s: float = 2.0
    forward_timeout_s: float = 12.0  # > an action's 10 s wait for the broker's acknowledgement

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def check(self) -> None:
        check_listen("admin endpoint", self.host, self.port, self.token, "--admin", "PROCESSOR_ADMIN_TOKEN")
        if self.stall_s <= 0 or self.loop_timeout_s <= 0 or self.forward_timeout_s <= 0:
            raise ConfigurationError("admin stall bound, loop timeout and forward timeout must be positive")


class Busy(Exception):
    """503: the event loop did not answer in time (or the engine is not running)."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    admin: AdminServer


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class AdminServer:
    """One engine's admin endpoint, serving from its own threads until ``close``."""

    def __init__(self, engine: Engine, config: AdminConfig, loop: asyncio.AbstractEventLoop,
                 httpd: _HTTPServer) -> None:
        self.engine = engine
        self.config = config
        self.loop = loop
        self._httpd = httpd
        self.registry = registry(lambda: self.on_loop(lambda: api.metrics_snapshot(engine)))
        self._producer: Producer | None = None
        self._producer_lock = threading.Lock()
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="admin-http", daemon=True)
        self._registry: RegistryPublisher | None = None
        self.peers = peers.Peers(engine)  # the other live instances, for the web UI

    @classmethod
    def start(cls, engine: Engine, config: AdminConfig, loop: asyncio.AbstractEventLoop) -> AdminServer:
        """Listen and serve; raises ConfigurationError for a bad config or an address in use."""
        config.check()
        server_class = _HTTPServer6 if ":" in config.host else _HTTPServer
        try:
            httpd = server_class((config.host, config.port), _Handler)
        except OSError as e:
            raise ConfigurationError(f"admin endpoint: cannot listen on {config.host}:{config.port}: {e}") from None
        server = cls(engine, config, loop, httpd)
        httpd.admin = server
        server._thread.start()
        server._registry = RegistryPublisher(server)  # where the cluster-wide CLI finds this endpoint
        server._registry.start()
        host, port = httpd.server_address[:2]
        log.info("admin endpoint listening on http://%s:%d (%s)", config.host if ":" not in str(host) else host,
                 port, "loopback" if config.loopback else "bearer token required")
        return server

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        """Stop serving (blocking: call off the event loop)."""
        if self._registry is not None:
            self._registry.close()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._producer_lock:
            if self._producer is not None:
                self._producer.flush(5)

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the engine's event loop and return its result; Busy when the loop does not
        answer within ``loop_timeout_s``."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            if not fut.set_running_or_notify_cancel():
                return  # the request gave up waiting
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)
        try:
            self.loop.call_soon_threadsafe(call)
        except RuntimeError:  # the loop is closed
            raise Busy("the engine is not running") from None
        try:
            return fut.result(self.config.loop_timeout_s)
        except TimeoutError:
            fut.cancel()
            raise Busy(f"engine busy: its event loop did not answer within {self.config.loop_timeout_s:g}s") from None

    def authorized(self, header: str | None) -> bool:
        return bearer_ok(header, self.config.token)

    def send_command(self, partition: int, invocation_id: str, kind: CommandKind) -> None:
        """Produce `kind` for `invocation_id` to its partition of the app's inbox, as the Client does;
        returns once the broker acknowledged it. Raises RuntimeError when it did not."""
        with self._producer_lock:
            if self._producer is None:
                self._producer = Producer({**kio.base_config(self.engine._client, self.engine._producer_extra),
                                           "enable.idempotence": True, "acks": "all", "linger.ms": 0})
            producer = self._producer
        outcome: list[KafkaError | None] = []
        producer.produce(self.engine.app.inbox_topic, key=invocation_id.encode(), partition=partition,
                         value=InboxCommand(kind=kind, invocation_id=invocation_id).encode(),
                         on_delivery=lambda err, _msg: outcome.append(err))
        producer.flush(10)
        if not outcome or outcome[0] is not None:
            raise RuntimeError(f"the {kind} command was not acknowledged: "
                               f"{outcome[0].str() if outcome and outcome[0] else 'no delivery report within 10s'}")


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "processor-admin"
    protocol_version = "HTTP/1.1"

    @property
    def admin(self) -> AdminServer:
        return self.server.admin

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- responses -------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS) + b"\n", "application/json")

    def _error(self, status: int, message: str) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="processor"'} if status == 401 else None
        self._send(status, orjson.dumps({"error": message}) + b"\n", "application/json", headers)

    # -- routing ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = dict(parse_qsl(url.query))
        try:
            if url.path in ("/", "/ui"):  # relative, so a proxy's path prefix survives
                self._send(302, b"", "text/plain", {"Location": "ui/"})
                return
            if parts[0] == "ui":  # the page must load to type the token: ui.py says why that is safe
                found = ui.asset("/".join(parts[1:]))
                if found is None:
                    self._error(404, f"no such file: {self.path}")
                else:
                    self._send(200, found[0], found[1], ui.HEADERS)
                return
            if parts == ["healthz"]:
                ok, why = self.admin.engine.health.verdict(self.admin.config.stall_s)
                self._send(200 if ok else 503, f"{'ok' if ok else 'unhealthy'}: {why}\n".encode(), "text/plain")
                return
            if parts == ["readyz"]:
                ready, detail = self.admin.on_loop(lambda: api.readiness(self.admin.engine))
                self._json(200 if ready else 503, detail)
                return
            if not self.admin.config.loopback and not self.admin.authorized(self.headers.get("Authorization")):
                self._error(401, "a bearer token is required (the endpoint listens beyond loopback)")
                return
            if parts[:2] == ["api", "instances"] and len(parts) > 2:
                self._forward("GET", parts[2], url.path.strip("/").split("/")[3:], url.query)
                return
            self._get(parts, query)
        except Busy as e:
            self._error(503, str(e))
        except (api.NotFound, peers.Unknown) as e:
            self._error(404, str(e))
        except ValueError as e:
            self._error(400, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _get(self, parts: list[str], query: dict[str, str]) -> None:
        engine = self.admin.engine
        match parts:
            case ["metrics"]:
                self._send(200, exposition(self.admin.registry), "text/plain; version=0.0.4; charset=utf-8")
            case ["api", "invocations"]:
                q = api.InvocationQuery.parse(query)
                self._json(200, self.admin.on_loop(lambda: api.invocations(engine, q)))
            case ["api", "invocations", inv]:
                exact = query.get("exact") == "1"
                self._json(200, self.admin.on_loop(lambda: api.invocation(engine, inv, exact=exact)))
            case ["api", "state", obj, key]:
                self._json(200, self.admin.on_loop(lambda: api.object_state(engine, obj, key)))
            case ["api", "timers"]:
                limit = int(query.get("limit") or 100)
                if not 1 <= limit <= api.MAX_LIMIT:
                    raise ValueError(f"limit must be within 1..{api.MAX_LIMIT}")
                self._json(200, self.admin.on_loop(lambda: api.timers(engine, limit)))
            case ["api", "cycle"]:
                self._json(200, self.admin.on_loop(lambda: api.cycle(engine)))
            case ["api", "partitions"]:
                self._json(200, self.admin.on_loop(lambda: api.partitions(engine)))
            case ["api", "instances"]:
                self._json(200, self.admin.peers.instances())
            case _:
                self._error(404, f"no such endpoint: {self.path}")

    def _forward(self, method: str, instance_id: str, raw_rest: list[str], query: str) -> None:
        """Ask live instance `instance_id` (``processor/_admin/peers.py``) and pass its answer back."""
        path = peers.forward_path(method, raw_rest, query, ACTIONS)
        record = self.admin.peers.live(instance_id)
        if record is None:
            raise peers.Unknown(f"no live instance {instance_id!r} of app {self.admin.engine.app.name} (not in "
                                "the registry, or not a member of the consumer group): see /api/instances")
        answer = peers.forward(record, method, path, self.headers.get("Authorization"),
                               self.admin.config.forward_timeout_s)
        if method == "POST" and answer.status == 202:
            log.warning("admin: %s forwarded to instance %s, requested by %s", path, instance_id,
                        self.address_string())
        self._send(answer.status, answer.body, "application/json",
                   {**answer.headers, "X-Content-Type-Options": "nosniff"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 16))  # no action takes a body
        raw = urlsplit(self.path).path.strip("/").split("/")
        parts = [unquote(p) for p in raw]
        try:
            match parts:
                case ["api", "invocations", inv, action] if action in ACTIONS:
                    pass
                case ["api", "instances", instance_id, *_]:  # checked here, and again by that instance
                    if not self.admin.config.token or not self.admin.authorized(self.headers.get("Authorization")):
                        self._error(401, "actions need the bearer token")
                        return
                    self._forward("POST", instance_id, raw[3:], "")
                    return
                case _:
                    self._error(404, f"no such action: {self.path}")
                    return
            if not self.admin.config.token:
                self._error(401, "actions need a token: start the processor with --admin-token or "
                                 "PROCESSOR_ADMIN_TOKEN")
                return
            if not self.admin.authorized(self.headers.get("Authorization")):
                self._error(401, "actions need the bearer token")
                return
            engine = self.admin.engine
            partition, owned = self.admin.on_loop(lambda: api.action_check(engine, inv, action))
            self.admin.send_command(partition, inv, ACTIONS[action])
            log.warning("admin: %s of invocation %s requested by %s", action, inv, self.address_string())
            self._json(202, {"invocation_id": inv, "action": action, "partition": partition, "owned": owned})
        except Busy as e:
            self._error(503, str(e))
        except (api.NotFound, peers.Unknown) as e:
            self._error(404, str(e))
        except api.Conflict as e:
            self._error(409, str(e))
        except (RuntimeError, KafkaException, BufferError) as e:
            self._error(502, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass
