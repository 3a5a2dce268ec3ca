"""Peer benchmark: the ten-step handler on Restate (restate-server 1.7.12 and its Python SDK), beside
`ten_steps`, when Restate is installed here; else issue 8's figures for it, quoted and marked as such.

restate-server runs as its own process (data in the scratch directory, its ports picked free on
127.0.0.1), the handler (`benchmarks/apps/restate_steps_app.py`) as another, registered through the
admin API. Invocations go through Restate's HTTP ingress: request → response, Restate's own path (ours
is Kafka in → output visible to read_committed). The same two parts as `ten_steps`: one invocation at a
time (p50, p99), and 64 invocations in flight in a closed loop (steps/s in the steady window).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks._engine import REPO, process_cpu_s
from benchmarks.harness import BenchContext, Row, benchmark, percentile
from benchmarks.ten_steps import CONCURRENCY, STEPS, WARMUP

VERSION = "1.7.12"
SERVER = REPO / "benchmarks" / ".restate" / "node_modules" / "@restatedev" / "restate-server-linux-x64" / "bin"
HANDLER = "BenchSteps/ten_steps"
# issue 8's figures, measured on this machine earlier (not in this run): quoted when Restate cannot run here
QUOTED = {"latency_p50_ms@1": 25.5, "latency_p99_ms@1": 36.4, "steps_per_s@64": 1450.0}
QUOTED_NOTE = ("quoted from issue 8 (Restate 1.7.12 + its Python SDK, measured on this machine earlier), "
               "not measured in this run")


def server_binary() -> Path | None:
    """restate-server: $RESTATE_SERVER, else benchmarks/.restate (npm install, see the README), else PATH."""
    for cand in (os.environ.get("RESTATE_SERVER"), str(SERVER / "restate-server"), shutil.which("restate-server")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand)
    return None


def _missing() -> str | None:
    """Why Restate cannot run here, or None."""
    if server_binary() is None:
        return (f"restate-server not found (npm install --prefix benchmarks/.restate "
                f"@restatedev/restate-server@{VERSION}, or set RESTATE_SERVER)")
    absent = [m for m in ("restate", "hypercorn") if importlib.util.find_spec(m) is None]
    if absent:
        return f"Python module(s) {', '.join(absent)} not installed (pip install -e '.[bench]')"
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class _Proc:
    """A child process with its output in a log file; stopped with SIGTERM, killed if that hangs."""

    def __init__(self, ctx: BenchContext, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.ctx = ctx
        self.name = name
        self.log_path = ctx.scratch / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ctx.scratch)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
                self.ctx.log(f"{self.name} did not stop within {timeout:.0f}s: killed")


class _Restate:
    """restate-server and the handler's endpoint, registered; `ingress` is the URL to invoke."""

    def __init__(self, ctx: BenchContext) -> None:
        binary = server_binary()
        assert binary is not None
        self.ctx = ctx
        node, ingress, admin, app = _free_ports(4)
        self.ingress = f"http://127.0.0.1:{ingress}"
        self.admin = f"http://127.0.0.1:{admin}"
        self.server = _Proc(ctx, "restate-server", [str(binary), "--no-logo", "--base-dir",
                                                    str(ctx.scratch / "restate-data")], {
            "RESTATE_LISTEN_MODE": "tcp", "RESTATE_BIND_ADDRESS": f"127.0.0.1:{node}",
            "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{node}/",
            "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ingress}",
            "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{admin}",
            "RESTATE_CLUSTER_NAME": ctx.unique("restate"), "RESTATE_NODE_NAME": "bench"})
        self.app: _Proc | None = None
        try:
            self.app = _Proc(ctx, "restate-app", [sys.executable, "-m", "benchmarks.apps.restate_steps_app"], {
                "BENCH_PORT": str(app), "BENCH_DEADLINE": str(time.time() + ctx.remaining()),
                "PYTHONPATH": str(REPO)})
            self._register(f"http://127.0.0.1:{app}")
        except BaseException:
            self.stop()
            raise

    def _register(self, endpoint: str) -> None:
        answers: list[str] = []

        def registered() -> bool:
            self.server.check_alive()
            if self.app is not None:
                self.app.check_alive()
            try:
                r = httpx.post(f"{self.admin}/deployments", json={"uri": endpoint}, timeout=10)
            except httpx.HTTPError as e:  # not listening yet
                answers[:] = [str(e)]
                return False
            answers[:] = [f"{r.status_code} {r.text[:200]}"]
            return r.status_code in (200, 201)

        self.ctx.wait_until(registered, 90, "restate-server up and the handler registered", interval=0.5)
        self.ctx.log(f"restate: handler registered ({answers[0][:80]})")

    @property
    def app_pid(self) -> int:
        assert self.app is not None
        return self.app.proc.pid

    def stop(self) -> None:
        if self.app is not None:
            # the SDK endpoint ignores SIGTERM here (hypercorn's shutdown trigger never fires); it is
            # stateless, so end it outright
            self.app.stop(sig=signal.SIGKILL)
        self.server.stop()


def _latency(ctx: BenchContext, url: str, iters: int) -> list[float]:
    out = []
    with httpx.Client(timeout=30) as client:
        for i in range(WARMUP + iters):
            ctx.check()
            t0 = time.monotonic()
            r = client.post(url, json={"seq": i, "key": f"lat{i % 100:02d}"})
            took = time.monotonic() - t0
            if r.status_code != 200 or r.json() != sum(range(STEPS)):
                raise AssertionError(f"invocation {i}: {r.status_code} {r.text[:200]}")
            if i >= WARMUP:
                out.append(took)
    return out


async def _closed_loop(ctx: BenchContext, url: str, rounds: int) -> list[float]:
    """CONCURRENCY clients, each `rounds` invocations one after another; completion times."""
    stamps: list[float] = []
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def one_key(k: int) -> None:
            for i in range(rounds):
                ctx.check()
                r = await client.post(url, json={"seq": i, "key": f"tp{k:02d}"})
                if r.status_code != 200 or r.json() != sum(range(STEPS)):
                    raise AssertionError(f"key {k} invocation {i}: {r.status_code} {r.text[:200]}")
                stamps.append(time.monotonic())

        await asyncio.wait_for(asyncio.gather(*(one_key(k) for k in range(CONCURRENCY))),
                               max(30.0, ctx.remaining() - 30))
    return stamps


def _quoted(ctx: BenchContext, why: str) -> list[Row]:
    units = {"latency_p50_ms@1": "ms", "latency_p99_ms@1": "ms", "steps_per_s@64": "steps/s"}
    return [ctx.row(m, v, units[m], status="quoted", notes=f"{QUOTED_NOTE}: {why}") for m, v in QUOTED.items()]


@benchmark("restate_steps", timeout_s=420)
def restate_steps(ctx: BenchContext) -> list[Row]:
    why = _missing()
    if why is not None:
        ctx.log(f"Restate cannot run here: {why}; quoting issue 8's figures")
        return _quoted(ctx, why)
    iters = ctx.pick(200, 30)
    rounds = ctx.pick(40, 10)
    try:
        restate = _Restate(ctx)
    except Exception as e:
        _quoted(ctx, f"restate-server did not come up: {str(e).splitlines()[0][:200]}")
        raise
    url = f"{restate.ingress}/{HANDLER}"
    try:
        ctx.log(f"latency at concurrency 1: {WARMUP} + {iters} invocations")
        lat = _latency(ctx, url, iters)
        p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
        ctx.log(f"  p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        ctx.log(f"throughput: {CONCURRENCY} clients x {rounds} invocations, closed loop")
        pids = {"restate-server": restate.server.proc.pid, "the SDK endpoint": restate.app_pid}
        cpu0 = {k: process_cpu_s(v) for k, v in pids.items()}
        client0, t0 = time.process_time(), time.monotonic()
        stamps = sorted(asyncio.run(_closed_loop(ctx, url, rounds)))
        took = time.monotonic() - t0
        shares = {k: (process_cpu_s(v) - cpu0[k]) / took for k, v in pids.items()}
        shares["the load client (httpx)"] = (time.process_time() - client0) / took
    finally:
        restate.stop()
    total = CONCURRENCY * rounds
    a, b = CONCURRENCY - 1, total - CONCURRENCY - 1  # the steady window, as ten_steps measures it
    window = stamps[b] - stamps[a]
    ips = (b - a) / window
    ctx.log(f"  {ips:,.0f} invocations/s, {ips * STEPS:,.0f} steps/s")
    sdk = importlib.metadata.version("restate-sdk")
    how = (f"restate-server {VERSION} (single node, default config, data in a scratch dir) + restate-sdk {sdk} "
           f"on hypercorn (h2c), both on this machine; HTTP ingress request → response")
    return [
        ctx.row("latency_p50_ms@1", p50, "ms",
                notes=f"{iters} invocations one at a time back to back after {WARMUP} warm-up, each "
                      f"{STEPS} sequential ctx.run_typed then the response; {how}"),
        ctx.row("latency_p99_ms@1", p99, "ms", notes=f"issue 8 quoted {QUOTED['latency_p99_ms@1']} ms (p50 "
                                                     f"{QUOTED['latency_p50_ms@1']}) measured here earlier"),
        ctx.row(f"invocations_per_s@{CONCURRENCY}", ips, "inv/s",
                notes=f"{CONCURRENCY} clients in a closed loop, {rounds} each; steady window {b - a} "
                      f"invocations in {window:.1f} s; CPU over the loop, in cores: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in shares.items())),
        ctx.row(f"steps_per_s@{CONCURRENCY}", ips * STEPS, "steps/s",
                notes=f"issue 8 quoted {QUOTED['steps_per_s@64']:,.0f} steps/s measured here earlier"),
    ]
