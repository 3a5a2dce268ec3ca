"""Introspection from the command line: invocations and journals, read from the partition stores
(LMDB read-only, so it works next to a running processor). The admin endpoint renders rows and
journal entries with the same functions (``row_dict``, ``entry_dict``)."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from processor._engine.core import Entry, decode_journal
from processor._engine.records import InvocationRow
from processor.state import keys
from processor.state.store import PartitionStore


def _stores(state_dir: Path, app: str) -> Iterator[tuple[int, PartitionStore]]:
    root = state_dir / app
    if not root.is_dir():
        raise FileNotFoundError(f"no state for app {app!r} under {state_dir}")
    for part in sorted((d for d in root.iterdir() if d.is_dir() and (d / "data.mdb").exists()),
                       key=lambda d: int(d.name) if d.name.isdigit() else -1):
        store = PartitionStore.open(part, readonly=True)
        try:
            yield int(part.name), store
        finally:
            store.close()


def invocations(state_dir: Path, app: str) -> list[tuple[int, InvocationRow]]:
    """(partition, row) of every invocation the stores hold."""
    return [(p, InvocationRow.decode(v)) for p, s in _stores(state_dir, app) for _, v in s.scan(keys.INVOCATION)]


def journal(state_dir: Path, app: str, invocation_id: str) -> list[Entry]:
    for _, s in _stores(state_dir, app):
        if s.get(keys.invocation_key(invocation_id)) is not None:
            return decode_journal(v for _, v in s.scan(keys.journal_prefix(invocation_id)))
    raise KeyError(invocation_id)


def _ms(ms: int | None) -> str:
    return "-" if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def value_json(data: bytes | None) -> Any:
    """A stored value for display: what it holds if it is JSON (the default serde), else its text,
    else ``{"base64": ...}``."""
    if data is None:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def row_dict(partition: int, r: InvocationRow, *, full: bool = False) -> dict[str, Any]:
    """An invocation row as JSON; `full` adds its input, result and where it came from."""
    d: dict[str, Any] = {
        "partition": partition, "id": r.id, "target": r.target, "key": r.key, "status": r.status.value,
        "attempt": r.attempt, "created": _ms(r.created_ms), "finished": _ms(r.finished_ms),
        "paused_reason": r.paused_reason,
        "failure": None if r.failure is None else f"{r.failure.type}: {r.failure.message}"}
    if full:
        d |= {"created_ms": r.created_ms, "finished_ms": r.finished_ms, "retry_at": _ms(r.retry_at_ms),
              "input": value_json(r.input), "result": value_json(r.result),
              "error_type": None if r.failure is None else r.failure.type,
              "source": None if r.source_topic is None else {
                  "topic": r.source_topic, "partition": r.source_partition, "offset": r.source_offset},
              "caller_id": r.caller_id, "idempotency_key": r.idempotency_key, "cancelled": r.cancelled}
    return d


def entry_state(e: Entry) -> str:
    if e.pending:
        return "waiting"
    if e.retry_at_ms is not None:
        return "retrying"
    return "failed" if e.failure else "done"


def entry_dict(e: Entry) -> dict[str, Any]:
    """A journal entry as JSON, its value decoded (``value_json``)."""
    return {"seq": e.seq, "kind": str(e.kind), "name": e.name, "state": entry_state(e), "attempts": e.attempts,
            "value": value_json(e.value),
            "failure": None if e.failure is None else {"type": e.failure.type, "message": e.failure.message},
            "retry_at": _ms(e.retry_at_ms) if e.retry_at_ms is not None else None,
            "due": _ms(e.due_ms) if e.due_ms is not None else None,
            # the timeline: when it began and ended (UTC), and how long it took (a step across its
            # attempts and backoff, a wait until it completed); None for entries journaled before these
            "started": _ms(e.started_ms) if e.started_ms is not None else None,
            "ended": _ms(e.ended_ms) if e.ended_ms is not None else None,
            "took_ms": e.ended_ms - e.started_ms if e.started_ms is not None and e.ended_ms is not None else None}


def format_invocations(rows: list[tuple[int, InvocationRow]], *, status: str | None, as_json: bool) -> str:
    picked = [(p, r) for p, r in rows if status is None or r.status.value == status]
    if as_json:
        return "\n".join(orjson.dumps(row_dict(p, r)).decode() for p, r in picked)
    lines = [f"{'partition':>9}  {'status':<11} {'invocation':<34} {'target':<24} {'key':<16} {'created':<19}  why"]
    for p, r in picked:
        why = r.paused_reason or ("" if r.failure is None else f"{r.failure.type}: {r.failure.message}")
        lines.append(f"{p:>9}  {r.status.value:<11} {r.id:<34} {r.target:<24} {(r.key or '-'):<16} "
                     f"{_ms(r.created_ms):<19}  {why.splitlines()[0] if why else ''}")
        lines.extend(f"{'':>48}{extra}" for extra in (why.splitlines()[1:] if why else []))
    lines.append(f"{len(picked)} invocation(s)")
    return "\n".join(lines)


def format_journal(entries: list[Entry]) -> str:
    lines = []
    for e in entries:
        state = entry_state(e)
        detail = f"{e.failure.type}: {e.failure.message}" if e.failure else (
            "" if e.value is None else e.value[:80].decode(errors="replace"))
        lines.append(f"#{e.seq:<4} {e.kind:<10} {e.name:<20} {state:<8} attempts={e.attempts}  {detail}")
    return "\n".join(lines)
