"""Text for people (``--json`` prints the dicts as they are): invocation tables, one invocation with
its journal, a key's state, timers, instances. Local and cluster-wide answers render the same."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import orjson

from processor._admin.registry import InstanceRecord
from processor._cluster.discovery import Judged

VALUE_WIDTH = 100  # a value longer than this is cut, with its full length said


def value_text(value: Any, width: int = VALUE_WIDTH) -> str:
    """A decoded value (``_inspect.value_json``) on one line: JSON, cut to `width` characters."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else f"{text[:width]}… ({len(text)} chars)"


def invocations_table(rows: Sequence[dict[str, Any]], *, instances: bool) -> str:
    """The rows as a table: one line each, a multi-line reason continued below its row."""
    head = f"{'partition':>9}  {'status':<11} {'invocation':<34} {'target':<24} {'key':<16} {'created':<19}  "
    if instances:
        head += f"{'instance':<14} "
    lines = [head + "why"]
    for r in rows:
        why = r.get("paused_reason") or r.get("failure") or ""
        first, *more = why.splitlines() or [""]
        line = (f"{r['partition']:>9}  {r['status']:<11} {r['id']:<34} {r['target']:<24} {(r.get('key') or '-'):<16} "
                f"{r['created']:<19}  ")
        if instances:
            line += f"{r.get('instance', '-'):<14} "
        lines.append(line + first)
        lines.extend(f"{'':>48}{extra}" for extra in more)
    lines.append(f"{len(rows)} invocation(s)")
    return "\n".join(lines)


def last_error(inv: dict[str, Any]) -> str | None:
    """The invocation's failure, else that of a step being retried (its last attempt's error)."""
    if inv.get("failure"):
        return str(inv["failure"])
    for e in reversed(inv.get("journal", ())):
        if e.get("failure") and e.get("state") == "retrying":
            f = e["failure"]
            return f"{f['type']}: {f['message']} (step #{e['seq']} {e['name']!r}, attempt {e['attempts']}, " \
                   f"retrying at {e.get('retry_at') or '?'})"
    if inv.get("paused_reason") and inv.get("status") != "queued":  # a queued one's says what it waits for
        return str(inv["paused_reason"])
    return None


def journal(inv: dict[str, Any]) -> str:
    """A header (status, error, attempts, result, where) and every entry with its value."""
    where = f"partition {inv['partition']}" + (f" on instance {inv['instance']}" if inv.get("instance") else "")
    head = [
        f"invocation  {inv['id']}",
        f"target      {inv['target']}" + (f"  key {inv['key']}" if inv.get("key") else ""),
        f"status      {inv['status']}  (attempt {inv.get('attempt', 0)}; {where}"
        + ("; in memory)" if inv.get("in_memory") else ")"),
        f"created     {inv.get('created', '-')}   finished {inv.get('finished', '-')}",
    ]
    error = last_error(inv)
    head.append(f"error       {error or '-'}")
    if inv.get("paused_reason") and inv["paused_reason"] != error:  # retries ran out: why, and the key it holds
        head.append(f"{'waiting' if inv.get('status') == 'queued' else 'paused':<11} {inv['paused_reason']}")
    if inv.get("retry_at") and inv.get("retry_at") != "-":
        head.append(f"retry at    {inv['retry_at']}")
    head.append(f"input       {value_text(inv.get('input'))}")
    head.append(f"result      {value_text(inv.get('result'))}")
    entries = inv.get("journal", ())
    head.append(f"journal     {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    for e in entries:
        detail = (f"{e['failure']['type']}: {e['failure']['message']}" if e.get("failure")
                  else value_text(e.get("value")))
        extra = f"  retry at {e['retry_at']}" if e.get("retry_at") else f"  due {e['due']}" if e.get("due") else ""
        took = "" if e.get("took_ms") is None else f"  took {_took(e['took_ms'])}"
        at = f"{e['started'][11:]}  " if e.get("started") else ""
        head.append(f"  #{e['seq']:<4} {at}{e['kind']:<12} {e['name']:<20} {e['state']:<8} "
                    f"attempts={e['attempts']}{took}  {detail}{extra}")
    return "\n".join(head)


def _took(ms: int) -> str:
    if ms < 1000:
        return f"{ms} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.0f} min" if ms < 7_200_000 else f"{ms / 3_600_000:.1f} h"


def object_state(d: dict[str, Any]) -> str:
    where = f"partition {d['partition']}" + (f" on instance {d['instance']}" if d.get("instance") else "")
    lines = [f"{d['object']}/{d['key']}  ({where})"]
    if not d["state"]:
        lines.append("  (no state)")
    width = max((len(k) for k in d["state"]), default=0)
    lines.extend(f"  {k:<{width}}  {value_text(v)}" for k, v in sorted(d["state"].items()))
    return "\n".join(lines)


def timers_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'due':<24} {'kind':<17} {'partition':>9}  {'invocation':<34} {'seq':>4} {'attempt':>7}  instance"]
    lines.extend(f"{t['due']:<24} {t['kind']:<17} {t['partition']:>9}  {t['invocation_id']:<34} {t['seq']:>4} "
                 f"{t['attempt']:>7}  {t.get('instance', '-')}" for t in rows)
    lines.append(f"{len(rows)} timer(s)")
    return "\n".join(lines)


def _ms(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def instance_dict(j: Judged, assigned: Sequence[int] | None) -> dict[str, Any]:
    r: InstanceRecord = j.record
    return {"instance_id": r.instance_id, "live": j.live, "why": j.why, "admin_url": r.admin_url, "host": r.host,
            "pid": r.pid, "partitions": list(r.partitions), "owned": list(r.owned),
            "assigned": None if assigned is None else list(assigned), "ready": r.ready,
            "started": _ms(r.started_ms), "heartbeat": _ms(r.heartbeat_ms)}


def instances_table(rows: Sequence[dict[str, Any]], members_without_endpoint: Sequence[str]) -> str:
    lines = [f"{'instance':<16} {'live':<5} {'ready':<5} {'active':<14} {'assigned':<14} {'admin url':<28} "
             f"{'heartbeat':<19}  why"]
    for d in rows:
        assigned = "?" if d["assigned"] is None else ",".join(map(str, d["assigned"])) or "-"
        lines.append(f"{d['instance_id']:<16} {'yes' if d['live'] else 'no':<5} {'yes' if d['ready'] else 'no':<5} "
                     f"{','.join(map(str, d['partitions'])) or '-':<14} {assigned:<14} {d['admin_url']:<28} "
                     f"{d['heartbeat']:<19}  {d['why']}")
    lines.extend(f"{m:<16} {'yes':<5} {'?':<5} {'?':<14} {'?':<14} {'(no admin endpoint)':<28}" for m in
                 members_without_endpoint)
    return "\n".join(lines)
