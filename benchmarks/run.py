"""Run the benchmarks against one broker and report: `python -m benchmarks.run [--quick] [--only NAME ...]`.

Starts the local broker (deploy/kafka/broker.sh, port KAFKA_PORT, default 19392) unless --bootstrap or
KAFKA_BOOTSTRAP_SERVERS names one, runs every registered benchmark in its own process with a hard
deadline, prints a table and writes it with the machine description into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import multiprocessing as mp
import os
import pkgutil
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import confluent_kafka
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

import benchmarks
from benchmarks._summary import comparison, fmt_value, render_markdown, render_text
from benchmarks._summary import ratio_text as _ratio
from benchmarks.harness import REGISTRY, Benchmark, Row, child_main

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BROKER_SH = REPO / "deploy" / "kafka" / "broker.sh"
README = HERE / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
DEFAULT_PORT = 19392
GRACE_S = 15.0  # after a benchmark's own deadline (which it should notice itself) the process is killed


# ---------------------------------------------------------------------------------------------- registry


def discover() -> dict[str, Benchmark]:
    """Import every benchmark module of the package; their @benchmark decorators fill REGISTRY."""
    for mod in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda m: m.name):
        if mod.name not in ("run", "harness") and not mod.name.startswith("_"):
            importlib.import_module(f"benchmarks.{mod.name}")
    return REGISTRY


def select(registry: dict[str, Benchmark], only: list[str] | None) -> list[Benchmark]:
    """The benchmarks to run, each after the ones it `needs` (its baselines)."""
    unknown = [n for n in only or [] if n not in registry]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; known: {sorted(registry)}")
    order: list[Benchmark] = []

    def add(name: str, chain: tuple[str, ...] = ()) -> None:
        if name in chain:
            raise SystemExit(f"benchmark dependency cycle: {' -> '.join((*chain, name))}")
        if name not in registry:
            raise SystemExit(f"{chain[-1]} needs unknown benchmark {name!r}")
        for dep in registry[name].needs:
            add(dep, (*chain, name))
        if registry[name] not in order:
            order.append(registry[name])

    for name in only or list(registry):
        add(name)
    return order


# ---------------------------------------------------------------------------------------------- broker


@contextmanager
def local_broker(port: int) -> Iterator[str]:
    """The project's local broker on `port`; stopped afterwards only if it was started here."""
    env = {**os.environ, "KAFKA_PORT": str(port)}
    running = subprocess.run([str(BROKER_SH), "status"], env=env, capture_output=True,
                             timeout=30).returncode == 0
    print(f"broker: {'using the running' if running else 'starting the'} local broker on port {port}",
          file=sys.stderr)
    out = subprocess.run([str(BROKER_SH), "start"], env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"local broker failed to start:\n{out.stderr}")
    try:
        yield out.stdout.strip().splitlines()[-1]
    finally:
        if not running:
            subprocess.run([str(BROKER_SH), "stop"], env=env, capture_output=True, timeout=120)
            print("broker: stopped", file=sys.stderr)


def warm(bootstrap: str) -> None:
    """Create __transaction_state and __consumer_offsets before anything is timed."""
    conf: dict[str, str | int | float | bool] = {"bootstrap.servers": bootstrap,
                                                 "broker.address.family": "v4"}
    admin = AdminClient(conf)
    admin.list_topics(timeout=30)
    p = Producer({**conf, "transactional.id": f"bench-warmup-{os.getpid()}"})
    p.init_transactions(60)
    topic = f"bench-warmup-{os.getpid()}-{int(time.time())}"
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    c = Consumer({**conf, "group.id": topic, "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + 60
        while True:  # the new topic's leader may take a moment
            try:
                c.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
                break
            except confluent_kafka.KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        c.close()
    admin.delete_topics([topic])[topic].result(timeout=30)


def kafka_version(bootstrap: str) -> str:
    """From the local broker's log if the broker is one of deploy/kafka/broker.sh's, else unknown."""
    port = bootstrap.rsplit(":", 1)[-1]
    work = Path(os.environ.get("KAFKA_WORK") or REPO / ".kafka" / port)
    try:
        log = (work / "logs" / "server.log").read_text(errors="replace")
        found = re.findall(r"Kafka version: (\S+)", log)
    except OSError:
        found = []
    return f"Apache Kafka {found[-1]} (KRaft, single node, deploy/kafka/broker.sh)" if found else "unknown"


# ---------------------------------------------------------------------------------------------- running


def run_one(bench: Benchmark, bootstrap: str, quick: bool) -> tuple[list[Row], str | None]:
    """Run one benchmark in its own process; returns its rows and an error (None if it succeeded)."""
    spawn = mp.get_context("spawn")
    recv, send = spawn.Pipe(duplex=False)
    scratch = tempfile.mkdtemp(prefix=f"bench-{bench.name}-")
    deadline = time.monotonic() + bench.timeout_s
    spec = {"name": bench.name, "module": bench.module, "bootstrap": bootstrap, "quick": quick,
            "deadline": deadline, "scratch": scratch}
    proc = spawn.Process(target=child_main, args=(spec, send), name=f"bench-{bench.name}", daemon=True)
    rows: list[Row] = []
    error: str | None = "exited without reporting"
    proc.start()
    send.close()
    try:
        while True:
            left = deadline + GRACE_S - time.monotonic()
            if left <= 0:
                error = f"TIMEOUT: killed after {bench.timeout_s + GRACE_S:.0f}s"
                break
            if not recv.poll(min(left, 1.0)):
                continue
            try:
                kind, payload = recv.recv()
            except EOFError:
                error = f"process died (exit code {proc.exitcode})"
                break
            if kind == "row":
                rows.append(payload)
            elif kind == "done":
                error = None
                break
            else:
                print(payload, file=sys.stderr)
                error = str(payload).strip().splitlines()[-1]
                break
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(10)
        recv.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return rows, error


# ---------------------------------------------------------------------------------------------- report


def table(rows: list[Row], failures: dict[str, str]) -> list[list[str]]:
    by_key = {r.key: r for r in rows}
    out = []
    for r in rows:
        ratio = ""
        if (bk := r.baseline_key) is not None and r.measured:
            b = by_key.get(bk)
            shown = bk.split("/", 1)[1] if bk.startswith(f"{r.bench}/") else bk
            ratio = (f"{_ratio(r.value / b.value)}× {shown}" if b and b.measured and b.value
                     else f"n/a ({shown} not measured)")
        out.append([r.bench, r.metric, fmt_value(r), r.unit, ratio, r.notes])
    out += [[name, "FAILED", "", "", "", err] for name, err in failures.items()]
    return out


HEAD = ["benchmark", "metric", "value", "unit", "ratio", "notes"]


def text_table(cells: list[list[str]]) -> str:
    return render_text(HEAD, cells, {2})


def markdown_table(cells: list[list[str]]) -> str:
    return render_markdown(HEAD, cells, {2})


def machine(bootstrap: str, kafka: str) -> list[tuple[str, str]]:
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        ("date", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("nproc", f"{len(os.sched_getaffinity(0))} (of {os.cpu_count()})"),
        ("CPU", model.group(1).strip() if model else platform.processor() or "unknown"),
        ("memory", f"{int(mem.group(1)) / 1024 / 1024:.1f} GiB" if mem else "unknown"),
        ("load average at start", load),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("confluent-kafka / librdkafka",
         f"{confluent_kafka.__version__} / {confluent_kafka.libversion()[0]}"),
        ("Kafka", f"{kafka} at {bootstrap}"),
        ("commit", git or "unknown"),
    ]


def write_readme(text: str) -> None:
    readme = README.read_text() if README.exists() else "# Benchmarks\n"
    block = f"{START}\n{text}\n{END}"
    if START in readme and END in readme:
        readme = readme[: readme.index(START)] + block + readme[readme.index(END) + len(END):]
    else:
        readme = readme.rstrip("\n") + "\n\n## Results\n\n" + block + "\n"
    README.write_text(readme)


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, numbers are rough)")
    ap.add_argument("--bootstrap", help="use this broker (default: KAFKA_BOOTSTRAP_SERVERS, else start one)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run these benchmarks (and their baselines)")
    ap.add_argument("--readme", action=argparse.BooleanOptionalAction, default=None,
                    help="write results into benchmarks/README.md (default: only for a full run of all)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write rows and machine as JSON here")
    ap.add_argument("--list", action="store_true", help="list the registered benchmarks and exit")
    args = ap.parse_args(argv)

    registry = discover()
    if args.list:
        for b in registry.values():
            print(f"{b.name:24} {b.module:32} timeout {b.timeout_s:5.0f}s  needs {', '.join(b.needs) or '-'}")
        return 0
    chosen = select(registry, args.only)
    external = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    port = int(os.environ.get("KAFKA_PORT", DEFAULT_PORT))

    rows: list[Row] = []
    failures: dict[str, str] = {}
    with (nullbroker(external) if external else local_broker(port)) as bootstrap:
        warm(bootstrap)
        info = machine(bootstrap, kafka_version(bootstrap))
        t0 = time.monotonic()
        for bench in chosen:
            print(f"== {bench.name} (deadline {bench.timeout_s:.0f}s)", file=sys.stderr, flush=True)
            got, err = run_one(bench, bootstrap, args.quick)
            rows += got
            if err is not None:
                failures[bench.name] = err
                print(f"!! {bench.name} FAILED: {err}", file=sys.stderr, flush=True)
        took = time.monotonic() - t0
        info.insert(5, ("load average at end", ", ".join(f"{x:.2f}" for x in os.getloadavg())))

    cells = table(rows, failures)
    print(text_table(cells))
    summary = comparison(rows, failures, quick=args.quick)
    if summary is not None:
        print("\n" + summary)
    mode = (f"`python -m benchmarks.run{' --quick' if args.quick else ''}"
            f"{' --only ' + ' '.join(args.only) if args.only else ''}`, {took:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"machine": dict(info), "mode": mode, "failures": failures,
                                         "comparison": summary,
                                         "rows": [asdict(r) for r in rows]}, indent=2))
    if args.readme or (args.readme is None and not args.quick and not args.only):
        summary_md = comparison(rows, failures, quick=args.quick, markdown=True)
        md = "\n".join([f"Run: {mode}.", "", "| machine | |", "|---|---|",
                        *(f"| {k} | {v} |" for k, v in info), "",
                        *([summary_md, ""] if summary_md else []), markdown_table(cells)])
        write_readme(md)
        print(f"wrote {README.relative_to(REPO)}", file=sys.stderr)
    return 1 if failures or any(r.status == "failed" for r in rows) else 0


@contextmanager
def nullbroker(bootstrap: str) -> Iterator[str]:
    print(f"broker: using {bootstrap} (not started or stopped here)", file=sys.stderr)
    yield bootstrap


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        traceback.print_exc(limit=0)
        sys.exit(130)
