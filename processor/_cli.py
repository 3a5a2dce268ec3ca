"""The ``processor`` command line: ``processor run MODULE:APP --bootstrap-servers ... --state-dir ...``
runs one engine in this process (``--workers 1``) or supervises N engine processes (``_workers.py``)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from processor import _kafka_config, _logs
from processor._app import App
from processor._engine.statedir import lock_state_dir, persisted_instance_id
from processor._errors import ConfigurationError, ProcessorError
from processor._workers import Supervisor, die_with_parent, wait_until_unlocked, worker_specs

log = logging.getLogger("processor.cli")
STOP_BOUND_S = 35.0  # the engine's own shutdown deadline is 30 s
WORKERS_STOP_S = STOP_BOUND_S + 5  # a supervisor's wait for its workers, which exit by themselves at STOP_BOUND_S


def load_app(spec: str) -> App:
    """Import ``module.path:attribute`` and return the App it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"expected MODULE:APP (e.g. shop:app), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigurationError(f"cannot import module {module_name!r}: {e}") from None
    app = getattr(module, attr, None)
    if app is None:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(app, App):
        raise ConfigurationError(f"{spec} is a {type(app).__name__}, not a processor.App")
    return app


async def _run(args: argparse.Namespace, context: dict[str, str]) -> None:
    from processor._engine.engine import Engine

    app = load_app(args.app)
    context["app"] = app.name
    kafka = _kafka_config.resolve(app.kafka_config, file=args.kafka_config)
    ingress_config = _ingress_config(args)  # checked before anything connects
    engine = Engine(app, bootstrap_servers=args.bootstrap_servers, state_dir=args.state_dir,
                    instance_id=args.instance_id, kafka_config=kafka, admin=_admin_config(args))
    context["instance"] = engine.instance_id
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stopper(engine))
    ingress = _start_ingress(ingress_config, args, app, kafka.settings)
    try:
        await engine.run()
    finally:
        if ingress is not None:
            await asyncio.to_thread(ingress.close)


def _ingress_config(args: argparse.Namespace) -> Any:
    """The HTTP ingress's config from ``--ingress-*`` (None without ``--ingress-port``), checked."""
    if args.ingress_port is None:
        return None
    from processor._ingress import IngressConfig

    config = IngressConfig(port=args.ingress_port, host=args.ingress_host, token=args.ingress_token or None,
                           timeout_s=args.ingress_timeout_s, max_body=args.ingress_max_body)
    config.check()
    return config


def _start_ingress(config: Any, args: argparse.Namespace, app: App, kafka: Any) -> Any:
    """Start the HTTP ingress of this process (the engine's, or with --workers N the supervisor's: one
    port for the instance; it is a Client, so it needs no partitions of its own)."""
    if config is None:
        return None
    from processor._ingress import Ingress

    return Ingress.start(app, config, args.bootstrap_servers, kafka)


def _admin_config(args: argparse.Namespace) -> Any:
    """The admin endpoint's config from ``--admin-*`` (None without ``--admin-port``); checked now,
    so a bad one fails before anything connects to Kafka."""
    if args.admin_port is None:
        return None
    from processor._admin.server import AdminConfig

    config = AdminConfig(port=args.admin_port, host=args.admin_host, token=args.admin_token or None,
                         stall_s=args.admin_stall_s)
    config.check()
    return config


def _admin_args(args: argparse.Namespace, worker: int) -> tuple[str, ...]:
    """A supervisor's ``--admin-*`` flags for worker `worker`: port + worker (0 stays 0: each picks a
    free one); the token travels in the environment (PROCESSOR_ADMIN_TOKEN), never on a command line."""
    if args.admin_port is None:
        return ()
    port = args.admin_port + worker if args.admin_port else 0
    return ("--admin-port", str(port), "--admin-host", args.admin_host, "--admin-stall-s", str(args.admin_stall_s))


def _supervise(args: argparse.Namespace, context: dict[str, str]) -> int:
    """``--workers N`` with N > 1: run N single-engine processes of the app and watch over them."""
    app = load_app(args.app)
    context["app"] = app.name
    kafka = _kafka_config.resolve(app.kafka_config, file=args.kafka_config)  # a bad one stops us, not N workers
    _admin_config(args)
    ingress_config = _ingress_config(args)
    if args.admin_token:
        os.environ["PROCESSOR_ADMIN_TOKEN"] = args.admin_token  # the workers' default
    state_dir = Path(args.state_dir)
    root = state_dir / app.name
    root.mkdir(parents=True, exist_ok=True)
    with lock_state_dir(root):  # one supervisor per state dir; each worker locks its own
        base_id = args.instance_id or persisted_instance_id(root)
        context["instance"] = base_id
        extra = ("--log-format", args.log_format, *(("--kafka-config", args.kafka_config) if args.kafka_config else ()))
        specs = worker_specs(app_spec=args.app, bootstrap=args.bootstrap_servers, state_dir=state_dir,
                             base_id=base_id, log_level=args.log_level, workers=args.workers, extra=extra,
                             extra_args=lambda i: _admin_args(args, i))
        wait_until_unlocked([s.state_dir / app.name for s in specs], WORKERS_STOP_S)
        supervisor = Supervisor(specs, stop_s=WORKERS_STOP_S)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _sig, _frame: supervisor.request_stop())
        log.info("supervisor of app %s: %d workers, instance ids %s-w0 to -w%d, state dirs %s/worker-<i>",
                 app.name, len(specs), base_id, len(specs) - 1, state_dir)
        ingress = _start_ingress(ingress_config, args, app, kafka.settings)
        try:
            code = supervisor.run()
        finally:
            if ingress is not None:
                ingress.close()
        log.info("supervisor of app %s stopped (exit code %d)", app.name, code)
        return code


def _worker_count(text: str) -> int:
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def _stopper(engine: Any) -> Any:
    """A signal handler: stop cleanly, and exit anyway once STOP_BOUND_S have passed (a Kafka call
    stuck past every deadline must not keep a stopped instance alive)."""
    def stop() -> None:
        engine.request_stop()
        if not any(t.name == "stop-watchdog" for t in threading.enumerate()):
            threading.Thread(target=_exit_after, args=(STOP_BOUND_S,), name="stop-watchdog", daemon=True).start()
    return stop


def _exit_after(seconds: float) -> None:
    time.sleep(seconds)
    log.error("still stopping after %.0fs; exiting now", seconds)
    logging.shutdown()
    os._exit(3)


def build_parser() -> argparse.ArgumentParser:
    """The command line; defaults read from the environment now."""
    parser = argparse.ArgumentParser(prog="processor", description="Durable handlers on Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an app: one instance of its consumer group per worker process")
    run.add_argument("app", help="MODULE:APP, e.g. shop:app")
    run.add_argument("--bootstrap-servers", metavar="HOSTS",
                     default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"),
                     help="Kafka's bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:19092)")
    run.add_argument("--state-dir", default="./state-dir", metavar="DIR",
                     help="where the partitions' LMDB stores live: a cache of the changelog, rebuilt from it when "
                          "lost (default: ./state-dir)")
    run.add_argument("--instance-id", default=None,
                     help="stable id of this instance (default: generated once, kept in the state dir)")
    run.add_argument("--log-level", default=os.environ.get("PROCESSOR_LOG_LEVEL", "INFO"), metavar="LEVEL",
                     help="DEBUG, INFO, WARNING or ERROR (default: $PROCESSOR_LOG_LEVEL or INFO)")
    run.add_argument("--log-format", choices=_logs.LOG_FORMATS, default=os.environ.get("PROCESSOR_LOG_FORMAT", "text"),
                     help="text, or json: one JSON object per line (time, level, logger, message, app, "
                          "instance) (default: $PROCESSOR_LOG_FORMAT or text)")
    run.add_argument("--kafka-config", metavar="FILE", default=os.environ.get(_kafka_config.FILE_ENV) or None,
                     help="librdkafka settings (security, tuning) in a properties file, key=value per line; "
                          "PROCESSOR_KAFKA_<SETTING> variables override it, and it overrides App(kafka_config=...) "
                          f"(default: ${_kafka_config.FILE_ENV}); see docs/security.md")
    run.add_argument("--workers", type=_worker_count, metavar="N",
                     default=os.environ.get("PROCESSOR_WORKERS") or str(os.cpu_count() or 1),
                     help="engine processes, each a group member with its own state dir DIR/worker-<i> "
                          "(default: $PROCESSOR_WORKERS or the number of cores); 1 runs the engine in this process")
    run.add_argument("--admin-port", type=int, default=None, metavar="PORT",
                     help="serve the admin endpoint (/healthz, /readyz, /metrics, /api; docs/operate.md) on PORT "
                          "(0: any free port; with --workers N, worker i uses PORT+i) (default: off)")
    run.add_argument("--admin-host", default="127.0.0.1",
                     help="address the admin endpoint binds (default: 127.0.0.1; beyond loopback it needs a token)")
    run.add_argument("--admin-token", default=os.environ.get("PROCESSOR_ADMIN_TOKEN"), metavar="TOKEN",
                     help="bearer token for actions (cancel, kill, purge, retry) and, beyond loopback, for every "
                          "request but /healthz and /readyz (default: $PROCESSOR_ADMIN_TOKEN)")
    run.add_argument("--admin-stall-s", type=float, default=60.0, metavar="SECONDS",
                     help="/healthz fails when the event loop has not run, or the commit loop has had work "
                          "without finishing a cycle, for this long (default: 60)")
    run.add_argument("--ingress-port", type=int, default=None, metavar="PORT",
                     help="serve the HTTP ingress (POST /<service>/<handler>, /<object>/<key>/<handler>, "
                          "/awakeables/<id>/resolve; docs/operate.md) on PORT (0: any free port; one per "
                          "`processor run`, also with --workers N) (default: off)")
    run.add_argument("--ingress-host", default="127.0.0.1",
                     help="address the ingress binds (default: 127.0.0.1; beyond loopback it needs a token)")
    run.add_argument("--ingress-token", default=os.environ.get("PROCESSOR_INGRESS_TOKEN"), metavar="TOKEN",
                     help="bearer token every ingress request must carry (default: $PROCESSOR_INGRESS_TOKEN; "
                          "none: only allowed on loopback)")
    run.add_argument("--ingress-timeout-s", type=float, default=30.0, metavar="SECONDS",
                     help="how long an ingress request waits for its result before a 504 with the invocation "
                          "id (default: 30)")
    run.add_argument("--ingress-max-body", type=int, default=512 * 1024, metavar="BYTES",
                     help="the largest ingress request body, larger ones get 413 (default: 524288)")
    run.add_argument("--supervisor-pid", type=int, default=None, help=argparse.SUPPRESS)  # set on workers
    from processor._cluster.commands import add_parsers

    add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "run":
        from processor._cluster import commands

        try:
            return commands.run(args)
        except KeyboardInterrupt:
            return 130
    if args.supervisor_pid is not None and not die_with_parent(args.supervisor_pid):
        print("processor: the supervisor that started this worker is gone; not starting", file=sys.stderr)
        return 1
    context: dict[str, str] = {}  # app and instance, for JSON lines: filled in once known
    _logs.configure(level=args.log_level, fmt=args.log_format, text_format=_log_format(args), context=context)
    code = 0
    try:
        if args.workers > 1:
            code = _supervise(args, context)
        else:
            asyncio.run(_run(args, context))
    except ConfigurationError as e:
        _fail(args, str(e))
        code = 2
    except ProcessorError as e:
        _fail(args, str(e))
        code = 1
    except KeyboardInterrupt:
        code = 130
    return _exit_leaving_stuck_threads(code)


def _fail(args: argparse.Namespace, message: str) -> None:
    """The one line saying why the command stops: a log record in JSON mode (so every line parses)."""
    if args.log_format == "json":
        log.error("%s", message)
    else:
        print(f"processor: {message}", file=sys.stderr)


def _log_format(args: argparse.Namespace) -> str:
    """A worker's lines name its instance: its supervisor's log holds every worker's."""
    who = "" if args.supervisor_pid is None else f"[{args.instance_id}] ".replace("%", "%%")
    return f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s"


def _exit_leaving_stuck_threads(code: int) -> int:
    """Return `code`, or exit with it at once when threads are still running after the engine
    stopped: a step body blocked in user code would otherwise keep the interpreter (which joins
    executor threads at exit) alive forever. Step bodies are at-least-once: the next owner reruns them."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    deadline = time.monotonic() + 2.0  # idle pool threads told to shut down exit within moments
    for t in others:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in others if t.is_alive()]
    if not stuck:
        return code
    log.warning("exiting with %d thread(s) still running, abandoned: %s", len(stuck), ", ".join(sorted(stuck)))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
