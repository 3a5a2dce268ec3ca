"""Drive the order example end to end against a real broker.

    python -m examples.orders.demo --bootstrap-servers 127.0.0.1:19092

Creates the input and output topics if missing, starts one processor instance as a subprocess,
produces a batch of orders (a few of them bad), reads ``order-events`` with a ``read_committed``
consumer until every good order came out, shows what landed in the dead-letter queue and which
invocations failed, stops the processor with SIGTERM, and reads the orders' state from the LMDB
stores it left, checking it against the events. Every wait has a deadline; on failure
the processor's log tail is printed and the exit status is non-zero. Each run uses fresh order ids,
so it can be run again and again against the same broker and state directory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

REPO = Path(__file__).resolve().parents[2]
from examples import _support as support  # noqa: E402
from examples._support import DemoError, rel, say, wait_for  # noqa: E402

APP_SPEC = "examples.orders.app:app"
PARTITIONS = 4
CUSTOMERS = ["ada", "grace", "linus", "barbara", "ken", "margaret"]
SKUS = ["book-42", "mug-7", "pen-3", "lamp-12", "desk-1", "cable-9"]


@dataclass(frozen=True, slots=True)
class Topics:
    orders: str
    events: str
    dlq: str
    app: str


def topics_from_env() -> Topics:
    # The app module is not imported here (it is the processor's business), but the names follow
    # the same rule: ORDERS_PREFIX in front of "orders", "order-events" and the app id "shop".
    prefix = os.environ.get("ORDERS_PREFIX", "")
    return Topics(orders=f"{prefix}orders", events=f"{prefix}order-events", dlq=f"{prefix}shop.dlq",
                  app=f"{prefix}shop")


# -- topics --------------------------------------------------------------------------------------

def ensure_topics(admin: AdminClient, names: list[str], partitions: int) -> None:
    md = admin.list_topics(timeout=15)
    missing = [n for n in names if n not in md.topics or md.topics[n].error is not None]
    for n in names:
        if n not in missing and len(md.topics[n].partitions) != partitions:
            say(f"note: topic {n} exists with {len(md.topics[n].partitions)} partitions (not {partitions})")
    if missing:
        futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1)
                                       for n in missing], operation_timeout=15, request_timeout=20)
        for name, fut in futures.items():
            try:
                fut.result(timeout=30)
                say(f"created topic {name} ({partitions} partitions)")
            except KafkaException as e:
                if e.args[0].code() != 36:  # TOPIC_ALREADY_EXISTS: fine
                    raise DemoError(f"cannot create topic {name}: {e.args[0]}") from None

    def leaders() -> bool:
        md = admin.list_topics(timeout=10)
        return all(n in md.topics and md.topics[n].error is None and md.topics[n].partitions
                   and all(pm.leader >= 0 for pm in md.topics[n].partitions.values()) for n in names)
    wait_for(f"partition leaders of {', '.join(names)}", leaders, 30)


def end_offsets(bootstrap: str, topic: str) -> list[TopicPartition]:
    """Where each partition of `topic` ends now (the high watermark); [] if the topic is missing."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"demo-offsets-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return []
        tps = []
        for part in sorted(md.partitions):
            _low, high = c.get_watermark_offsets(TopicPartition(topic, part), timeout=10, cached=False)
            tps.append(TopicPartition(topic, part, high))
        return tps
    finally:
        c.close()


# -- the processor subprocess --------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not Path("/proc/self").exists():
        return True  # no procfs: assume the pid is still that processor
    return cmdline.exists() and b"processor" in cmdline.read_bytes()


class Processor(support.Processor):
    """The shared demo processor, plus a pidfile: one processor per state dir (a second one would share
    its instance id and fence it)."""

    rel = staticmethod(rel)

    def __init__(self, bootstrap: str, state_dir: Path) -> None:
        super().__init__(APP_SPEC, bootstrap, state_dir)

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "processor.pid"

    def check_free(self) -> None:
        if self.pidfile.exists():
            old = int(self.pidfile.read_text().strip() or 0)
            if old and _alive(old):
                raise DemoError(f"a processor (pid {old}) is still running on {self.state_dir}; stop it first")

    def start(self) -> None:
        super().start()
        assert self.proc is not None
        self.pidfile.write_text(f"{self.proc.pid}\n")


# -- the sample orders ---------------------------------------------------------------------------

def sample_orders(run: str, count: int) -> tuple[list[tuple[str, bytes]], set[str], dict[str, str]]:
    """(order id, value bytes) records to produce; the ids expected on order-events; and the bad
    ones with what should happen to them."""
    rng = random.Random(run)
    records: list[tuple[str, bytes]] = []
    good: set[str] = set()
    bad: dict[str, str] = {}
    negative_at, malformed_at = count // 3, (2 * count) // 3
    for i in range(1, count + 1):
        oid = f"{run}-{i:03d}"
        qtys = {sku: rng.randint(1, 3) for sku in rng.sample(SKUS, rng.randint(1, 3))}
        total = round(sum(qtys.values()) * rng.uniform(4, 40), 2)
        order: dict[str, Any] = {"id": oid, "customer": rng.choice(CUSTOMERS),
                                 "items": [{"sku": sku, "qty": q} for sku, q in qtys.items()], "total": total}
        if i == negative_at:
            order["total"] = -total
            bad[oid] = "negative total: TerminalError, invocation failed, no event"
            records.append((oid, orjson.dumps(order)))
        elif i == malformed_at:
            bad[oid] = "malformed JSON: rejected by the serde, sent to the DLQ"
            records.append((oid, orjson.dumps(order)[:-7]))  # cut off mid-record
        else:
            good.add(oid)
            records.append((oid, orjson.dumps(order)))
    return records, good, bad


def produce(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    # murmur2_random: the Java client's partitioner, so the processor and any Java producer agree on
    # which partition an order id lives in.
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "partitioner": "murmur2_random", "linger.ms": 5})
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for key, value in records:
        producer.produce(topic, key=key.encode(), value=value, on_delivery=on_delivery)
        producer.poll(0)
    left = producer.flush(30)
    if left or errors:
        raise DemoError(f"producing to {topic}: {left} records undelivered, errors {errors[:3]}")


# -- reading the results -------------------------------------------------------------------------

@dataclass(slots=True)
class Out:
    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    headers: dict[str, str]


def collect(bootstrap: str, start: list[TopicPartition], run: str, done: Callable[[list[Out]], bool] | None,
            timeout: float, proc: Processor | None = None) -> list[Out]:
    """Read this run's records from `start` with read_committed until `done(records)` holds, or, with
    `done=None`, until the end of every partition. Returns what was read when the deadline passes."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"demo-reader-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "auto.offset.reset": "earliest", "enable.partition.eof": done is None})
    seen: list[Out] = []
    at_end: set[tuple[str, int]] = set()
    try:
        c.assign(start)
        deadline = time.monotonic() + timeout
        while not (done(seen) if done is not None else len(at_end) == len(start)):
            if time.monotonic() > deadline:
                if done is None:
                    raise DemoError(f"did not reach the end of {sorted({tp.topic for tp in start})} "
                                    f"within {timeout:.0f}s")
                break
            if proc is not None:
                proc.check_alive()
            for m in c.consume(500, 0.2):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add((m.topic() or "", m.partition() or 0))
                    continue
                at_end.discard((m.topic() or "", m.partition() or 0))
                raw_key: Any = m.key() or b""
                key = raw_key.decode(errors="replace") if isinstance(raw_key, bytes) else str(raw_key)
                if not key.startswith(run + "-"):
                    continue  # an earlier run's record
                raw_headers: Any = m.headers() or []
                headers = {str(k): (v or b"").decode(errors="replace") for k, v in raw_headers}
                value: Any = m.value() or b""
                seen.append(Out(m.topic() or "", m.partition() or 0, m.offset() or 0, key, bytes(value), headers))
    finally:
        c.close()
    return seen


def failed_invocations(log: str, run: str) -> list[tuple[str, str]]:
    """(invocation id, error) of this run's failed invocations, from the processor log."""
    out = []
    for m in re.finditer(r"invocation (\S+) \((\S+)\) failed: (.*)", log):
        if run + "-" in m.group(3):
            out.append((m.group(1), m.group(3)))
    return out


def read_state(state_dir: Path, app: str, order_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The `order` object's state of each order id, read from the LMDB stores the processor left
    (read-only, after it stopped). The stores hold committed data only."""
    import lmdb

    from processor.state import keys

    out: dict[str, dict[str, Any]] = {}
    root = state_dir / app
    parts = sorted(d for d in root.iterdir() if (d / "data.mdb").exists()) if root.exists() else []
    for part in parts:
        env = lmdb.open(str(part), readonly=True, lock=True, subdir=True, max_dbs=0)
        try:
            with env.begin(buffers=False) as txn:
                cur = txn.cursor()
                for oid in order_ids:
                    prefix = keys.state_prefix("order", oid)
                    if not cur.set_range(prefix):
                        continue
                    for k, v in cur.iternext():
                        if not bytes(k).startswith(prefix):
                            break
                        _obj, _key, name = keys.parse_state_key(bytes(k))
                        out.setdefault(oid, {})[name] = orjson.loads(v)
        finally:
            env.close()
    return out


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(("  " + r).rstrip() for r in [line, sep, *body])


# -- main ----------------------------------------------------------------------------------------

def run_demo(args: argparse.Namespace) -> int:
    t = topics_from_env()
    bootstrap = args.bootstrap_servers
    run = "o" + time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        admin.list_topics(timeout=15)
    except KafkaException as e:
        raise DemoError(f"cannot reach Kafka at {bootstrap}: {e.args[0]}") from None

    say(f"== 1. topics on {bootstrap}")
    ensure_topics(admin, [t.orders, t.events], PARTITIONS)
    say(f"  input {t.orders}, output {t.events}; the processor creates {t.app}.inbox, "
        f"{t.app}.changelog and {t.dlq} itself")

    say("\n== 2. start the processor")
    proc = Processor(bootstrap, Path(args.state_dir).resolve())
    proc.check_free()
    try:
        proc.start()
        proc.wait_ready(args.timeout)
        return _drive(args, t, bootstrap, run, proc)
    except BaseException as e:
        # Stop the processor first, so that nothing below (a closed stdout, say) can leave it running.
        with contextlib.suppress(Exception):  # not stopping in time: it was killed
            proc.stop(15)
        what = "interrupted" if isinstance(e, KeyboardInterrupt | SystemExit) else f"{type(e).__name__}: {e}"
        say(f"\ndemo FAILED: {what}\n-- processor stopped; its log (last 40 lines of {proc.log_path}):")
        say(proc.tail())
        if isinstance(e, DemoError):
            e.reported = True
        raise


def _drive(args: argparse.Namespace, t: Topics, bootstrap: str, run: str, proc: Processor) -> int:
    events_start = end_offsets(bootstrap, t.events)
    dlq_start = end_offsets(bootstrap, t.dlq)
    if not dlq_start:
        raise DemoError(f"the processor is running but {t.dlq} does not exist")

    say(f"\n== 3. produce {args.orders} orders to {t.orders} (run {run})")
    records, good, bad = sample_orders(run, args.orders)
    produce(bootstrap, t.orders, records)
    say(f"  {len(good)} good orders, {len(bad)} bad ones:")
    for oid, why in sorted(bad.items()):
        say(f"    {oid}: {why}")

    say(f"\n== 4. read {t.events} and {t.dlq} (read_committed) until every good order came out")
    t0 = time.monotonic()
    malformed = {oid for oid, why in bad.items() if "malformed" in why}
    negative = {oid for oid, why in bad.items() if "negative" in why}

    def all_out(seen: list[Out]) -> bool:
        keys = {o.key for o in seen}
        return good <= keys and malformed <= keys

    if all_out(collect(bootstrap, events_start + dlq_start, run, all_out, args.timeout, proc)):
        say(f"  every good order came out after {time.monotonic() - t0:.1f}s")
        wait_for("the negative-total order's failure in the processor log",
                 lambda: len(failed_invocations(proc.log(), run)) >= len(negative), 15)
    else:
        say(f"  NOT every good order came out within {args.timeout:.0f}s")
    failures = failed_invocations(proc.log(), run)

    say("\n== 5. stop the processor (SIGTERM)")
    code = proc.stop(args.timeout)
    say(f"  exited with status {code}")

    say("\n== 6. what came out: this run's records, read_committed, from before the first order to the end")
    seen = collect(bootstrap, events_start + dlq_start, run, None, args.timeout)
    events = sorted((o for o in seen if o.topic == t.events), key=lambda o: (o.key, o.partition, o.offset))
    dlq = sorted((o for o in seen if o.topic == t.dlq), key=lambda o: (o.key, o.partition, o.offset))
    rows = []
    for o in events:
        e = orjson.loads(o.value)
        rows.append([o.key, e["customer"], f"{e['total']:.2f}", str(len(e["reservations"])), e["payment"],
                     f"{o.partition}@{o.offset}"])
    say(f"\n{t.events} ({len(events)} records):")
    say(table(["order", "customer", "total", "items", "payment", "partition@offset"], rows))

    say(f"\n{t.dlq} ({len(dlq)} records):")
    say(table(["key", "processor.error", "source"],
              [[o.key, o.headers.get("processor.error", "?"),
                f"{o.headers.get('processor.source.topic', '?')}[{o.headers.get('processor.source.partition', '?')}]"
                f"@{o.headers.get('processor.source.offset', '?')}"] for o in dlq]))
    say("  value: " + (repr(dlq[0].value[-40:]) if dlq else "-"))

    say(f"\nfailed invocations (from the processor log, {len(failures)}):")
    for inv, err in failures:
        say(f"  {inv}: {err}")

    state = read_state(proc.state_dir, t.app, sorted(good | set(bad)))
    with_state = sorted(set(bad) & state.keys())
    say(f"\n== 7. the order objects' state, read from the LMDB stores in {proc.rel(proc.state_dir)}")
    say(table(["order", "status", "payment", "items"],
              [[oid, str(st.get("status")), str(st.get("payment")),
                ", ".join(f"{it['sku']} x{it['qty']}" for it in st.get("items") or [])]
               for oid, st in sorted(state.items())][:5]))
    say(f"  ... {len(state)} orders have state; bad orders with state: {', '.join(with_state) or 'none'}")

    problems = []
    counts: dict[str, int] = {}
    for o in events:
        counts[o.key] = counts.get(o.key, 0) + 1
    if missing := sorted(good - counts.keys()):
        problems.append(f"no event within {args.timeout:.0f}s for good orders {missing}")
    if dups := sorted(k for k, n in counts.items() if n > 1):
        problems.append(f"more than one event for {dups}")
    if unexpected := sorted(counts.keys() - good):
        problems.append(f"events for orders that should have none: {unexpected}")
    if {o.key for o in dlq} != malformed:
        problems.append(f"DLQ holds {sorted(o.key for o in dlq)}, expected {sorted(malformed)}")
    if len(failures) != len(negative):
        problems.append(f"expected {len(negative)} failed invocation(s), the log shows {len(failures)}")
    payments = {o.key: orjson.loads(o.value)["payment"] for o in events}
    if wrong := sorted(oid for oid in good if state.get(oid, {}).get("payment") != payments.get(oid)
                       or state.get(oid, {}).get("status") != "placed"):
        problems.append(f"state does not match the events for {wrong}")
    if with_state:
        problems.append(f"bad orders have state: {with_state}")
    if code != 0:
        problems.append(f"the processor exited with status {code}")
    if problems:
        raise DemoError("; ".join(problems))
    say(f"\nOK: {len(good)} good orders -> exactly one event each; {len(negative)} failed with TerminalError "
        f"(no event, no state); {len(malformed)} malformed -> {t.dlq}; state matches the events; clean shutdown")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.orders.demo",
                                     description="Run the order example end to end.")
    parser.add_argument("--bootstrap-servers",
                        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"))
    parser.add_argument("--state-dir", default=str(REPO / ".demo-state"))
    parser.add_argument("--orders", type=int, default=20, help="how many orders to produce (>= 6)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed for each wait")
    args = parser.parse_args(argv)
    if args.orders < 6:
        parser.error("--orders must be at least 6 (two of them are bad)")
    def on_sigterm(_sig: int, _frame: object) -> None:
        raise SystemExit(143)  # unwinds through run_demo, which stops the processor

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return run_demo(args)
    except DemoError as e:
        if not e.reported:
            say(f"\ndemo FAILED: {e}")
        return 1
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):
            say("\ninterrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
