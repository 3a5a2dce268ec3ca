"""The fallback with no live instance to ask: the stores of a ``--state-dir``, read-only (fine next to
a running processor), answered in the shapes the admin API uses so that merging and rendering are
the same. Each store dir poses as the instance that last ran on it (``last-instance-id``, written at
start; else ``instance-id``): where the consumer group assigns a partition to another instance now,
that dir's rows of it are not shown (``merge.coverage``).

With no state dir either, a small app's state is read from its changelog topic: every partition
restored into memory (the engine's restore, read_committed), posing as one instance that serves all
partitions."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from processor import _journal_export as export
from processor._admin import api
from processor._admin.registry import InstanceRecord
from processor._cluster.discovery import INCOMPLETE, USAGE, CliError
from processor._cluster.fanout import Answer
from processor._engine import routing
from processor._engine.core import decode_journal
from processor._engine.records import InvocationRow
from processor._engine.statedir import LAST_INSTANCE_FILE
from processor._inspect import entry_dict, row_dict, value_json
from processor.state import keys
from processor.state.changelog import RestoreError, log_end, restore
from processor.state.memory import MemoryStore
from processor.state.store import PartitionStore, Store
from processor.timers import decode_timer

MAX_CHANGELOG_RECORDS = 1_000_000  # what the CLI materializes from a changelog by default (~5 s at restore speed)
READS = frozenset({"invocations", "journal", "state", "timers"})  # the commands a materialized changelog answers


def changelog_answers(config: dict[str, Any], app: str, partitions: int, build: Callable[[list[tuple[int, Store]]],
                      dict[str, Any]], *, max_records: int, timeout: float) -> list[Answer]:
    """One answer built from every partition of `<app>.changelog`, restored into memory. Refuses
    (CliError) a changelog longer than `max_records`: that app is not small, read a state dir."""
    topic = f"{app}.changelog"
    if partitions <= 0:
        raise CliError(f"app {app!r} has no topics on this cluster (no {topic}): a wrong --app?", USAGE)
    deadline = time.monotonic() + timeout
    try:
        total = sum(log_end(config, topic, p, deadline=deadline) for p in range(partitions))
    except RestoreError as e:
        raise CliError(f"cannot read {topic}: {e}", INCOMPLETE) from None
    if total > max_records:
        raise CliError(f"{topic} holds {total:,} records, more than --max-changelog-records {max_records:,}: start "
                       "an instance with --admin-port, or pass --state-dir DIR of one", INCOMPLETE)
    stores: list[tuple[int, Store]] = []
    for p in range(partitions):
        store = MemoryStore()
        try:
            restore(store, consumer_config=config, topic=topic, partition=p, deadline_s=max(timeout, 60.0))
        except RestoreError as e:
            raise CliError(f"cannot read {topic}[{p}]: {e}", INCOMPLETE) from None
        stores.append((p, store))
    body = build(stores)
    body["partitions"] = list(range(partitions))
    record = InstanceRecord(app=app, instance_id=f"({topic})", admin_url=f"kafka:{topic}", host="", pid=0,
                            started_ms=0, heartbeat_ms=0, partitions=tuple(body["partitions"]))
    return [Answer(instance=record, status=200, body=body)]


def store_roots(state_dir: Path, app: str) -> list[tuple[str, Path]]:
    """(instance id, dir) of every store dir of `app` under `state_dir`: ``DIR/<app>`` and, for a
    supervisor's dir (``--workers N``), ``DIR/worker-<i>/<app>``."""
    if not state_dir.is_dir():
        raise CliError(f"no state dir {state_dir}", USAGE)
    roots = [r for r in [state_dir / app, *sorted(state_dir.glob(f"worker-*/{app}"))] if r.is_dir()]
    if not roots:
        found = sorted({d.name for d in state_dir.iterdir() if d.is_dir() and (d / LAST_INSTANCE_FILE).exists()})
        raise CliError(f"no state for app {app!r} under {state_dir} (expected {state_dir / app}/ or "
                       f"{state_dir}/worker-<i>/{app}/); apps there: {', '.join(found) or 'none'}", USAGE)
    return [(_instance_of(r), r) for r in roots]


def _instance_of(root: Path) -> str:
    for name in (LAST_INSTANCE_FILE, "instance-id"):
        f = root / name
        if f.exists() and f.read_text().strip():
            return f.read_text().strip()
    return f"(unknown: {root})"


def _partitions(root: Path) -> list[tuple[int, Path]]:
    return sorted((int(d.name), d) for d in root.iterdir() if d.is_dir() and d.name.isdigit()
                  and (d / "data.mdb").exists())


def answers(state_dir: Path, app: str, build: Callable[[list[tuple[int, Store]]], dict[str, Any]]
            ) -> list[Answer]:
    """One answer per store dir: `build` gets its (partition, store) pairs, opened read-only."""
    out = []
    for iid, root in store_roots(state_dir, app):
        stores: list[tuple[int, Store]] = []
        try:
            for p, d in _partitions(root):
                stores.append((p, PartitionStore.open(d, readonly=True)))
            body = build(stores)
        finally:
            for _, s in stores:
                s.close()
        body["partitions"] = [p for p, _ in stores]
        record = InstanceRecord(app=app, instance_id=iid, admin_url=f"file://{root}", host="", pid=0,
                                started_ms=0, heartbeat_ms=0, partitions=tuple(body["partitions"]))
        out.append(Answer(instance=record, status=200, body=body))
    return out


def invocations(q: api.InvocationQuery) -> Callable[[list[tuple[int, Store]]], dict[str, Any]]:
    def build(stores: list[tuple[int, Store]]) -> dict[str, Any]:
        now = int(time.time() * 1000)
        rows = []
        for p, s in stores:
            for _, v in s.scan(keys.INVOCATION):
                r = InvocationRow.decode(v)
                if q.matches(r, now):
                    rows.append(row_dict(p, r))
        return {"invocations": rows, "complete": True}
    return build


def invocation(invocation_id: str, *, exact: bool = False) -> Callable[[list[tuple[int, Store]]], dict[str, Any]]:
    p = routing.partition_of(invocation_id)

    def build(stores: list[tuple[int, Store]]) -> dict[str, Any]:
        for q, s in stores:
            if q != p:
                continue
            target = invocation_id
            if s.get(keys.invocation_key(target)) is None and (alias := s.get(keys.dedup_key(target))) is not None:
                target = alias.decode()  # a Client's id for a workflow run names the run
            raw = s.get(keys.invocation_key(target))
            if raw is None:
                break
            row = InvocationRow.decode(raw)
            journal = decode_journal(v for _, v in s.scan(keys.journal_prefix(target)))
            found = {**row_dict(p, row, full=True), "in_memory": False, "journal": [entry_dict(e) for e in journal]}
            return {"found": found | ({"exact": export.exact(row, journal)} if exact else {})}
        return {"found": None}
    return build


def object_state(obj: str, key: str, partitions_total: int | None
                 ) -> Callable[[list[tuple[int, Store]]], dict[str, Any]]:
    def build(stores: list[tuple[int, Store]]) -> dict[str, Any]:
        for p, s in stores:
            entries = {keys.parse_state_key(k)[2]: value_json(v) for k, v in s.scan(keys.state_prefix(obj, key))}
            if entries and (partitions_total is None or
                            routing.partition_for_key(key.encode(), partitions_total) == p):
                return {"found": {"object": obj, "key": key, "partition": p, "state": entries}}
        return {"found": None}
    return build


def timers(limit: int) -> Callable[[list[tuple[int, Store]]], dict[str, Any]]:
    def build(stores: list[tuple[int, Store]]) -> dict[str, Any]:
        out = []
        for p, s in stores:
            for n, (k, v) in enumerate(s.scan(keys.TIMER)):
                if n >= limit:
                    break
                due, inv, seq = keys.parse_timer_key(k)
                kind, attempt, _ = decode_timer(v)
                out.append({"due_ms": due, "due": api._iso(due), "invocation_id": inv, "seq": seq, "partition": p,
                            "kind": kind.value, "attempt": attempt})
        return {"timers": out}
    return build
