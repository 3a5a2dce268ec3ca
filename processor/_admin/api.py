"""What the admin endpoint reads from an engine: each function runs ON the engine's event loop
(the server hops there, ``AdminServer.on_loop``) and returns plain JSON-ready values.

Only partitions the instance owns and has active are read: a store left from a partition that moved
away is never shown as current. Reads go through each partition's ``PartitionState`` (open and sealed
overlays over the store), so they include writes of cycles not committed yet; ``/api/cycle`` says
what is in flight.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from processor import _journal_export as export
from processor._engine import routing
from processor._engine.forwarding import FORWARDS
from processor._engine.records import InvocationRow, Status
from processor._inspect import entry_dict, row_dict, value_json
from processor.state import keys
from processor.timers import decode_timer

if TYPE_CHECKING:
    from processor._engine.engine import Engine
    from processor._engine.partition import PartitionWorker

MAX_LIMIT = 10_000
SCAN_BUDGET = 200_000  # stored rows one listing decodes at most (it runs on the event loop)


class NotFound(Exception):
    """404: what the request names is not on this instance (or does not exist)."""


class Conflict(Exception):
    """409: the action does not apply to the invocation as it is."""


# -- readiness -----------------------------------------------------------------------------------

def readiness(engine: Engine) -> tuple[bool, dict[str, Any]]:
    """Ready: an assignment is restored and active (``Engine.ready``), and no rebuild runs."""
    restoring = sorted(engine._restoring) + sorted(engine._restored)
    ready = engine.ready.is_set() and not engine._rebuilding and not restoring
    return ready, {"ready": ready, "owned": sorted(engine._owned), "active": sorted(engine.workers),
                   "restoring": restoring, "rebuilding": engine._rebuilding}


# -- invocations ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class InvocationQuery:
    status: Status | None = None
    handler: str | None = None   # "service/handler", or a service name alone
    key: str | None = None
    older_than_s: float | None = None
    limit: int = 100

    @staticmethod
    def parse(q: dict[str, str]) -> InvocationQuery:
        """From query parameters; raises ValueError with a message for the client."""
        status = None
        if q.get("status"):
            try:
                status = Status(q["status"])
            except ValueError:
                raise ValueError(f"status must be one of {[s.value for s in Status]}") from None
        older = float(q["older_than_s"]) if q.get("older_than_s") else None
        limit = int(q.get("limit") or 100)
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be within 1..{MAX_LIMIT}")
        return InvocationQuery(status=status, handler=q.get("handler") or None, key=q.get("key") or None,
                               older_than_s=older, limit=limit)

    def matches(self, r: InvocationRow, now_ms: int) -> bool:
        if self.status is not None and r.status is not self.status:
            return False
        if self.handler is not None and self.handler not in (r.target, r.service):
            return False
        if self.key is not None and r.key != self.key:
            return False
        return self.older_than_s is None or r.created_ms <= now_ms - self.older_than_s * 1000


def _rows(w: PartitionWorker) -> Iterator[InvocationRow]:
    """``PartitionWorker.rows()``, lazily: in memory first, then the stored rows (a listing with a
    limit stops early instead of decoding every row of a big store on the event loop)."""
    mine = {rt.invocation_id: rt.row for rt in w.runtimes.values()} | w._queued_rows
    yield from mine.values()
    for _, v in w.state.scan(keys.INVOCATION):
        r = InvocationRow.decode(v)
        if r.id not in mine:
            yield r


def invocations(engine: Engine, q: InvocationQuery) -> dict[str, Any]:
    now = int(time.time() * 1000)
    out: list[dict[str, Any]] = []
    scanned, complete = 0, True
    for p, w in sorted(engine.workers.items()):
        for r in _rows(w):
            scanned += 1
            if q.matches(r, now):
                out.append(row_dict(p, r))
                if len(out) >= q.limit:
                    break
            if scanned >= SCAN_BUDGET:
                complete = False
                break
        if len(out) >= q.limit or not complete:
            break
    return {"partitions": sorted(engine.workers), "invocations": out, "complete": complete}


def _find(engine: Engine, invocation_id: str) -> tuple[int, PartitionWorker | None, InvocationRow | None]:
    """The invocation's partition, its worker if this instance has it active, and there its row (an
    alias — a Client's id for a workflow run — names the run). NotFound for a malformed id."""
    try:
        p = routing.partition_of(invocation_id)
    except ValueError as e:
        raise NotFound(str(e)) from None
    w = engine.workers.get(p)
    return p, w, None if w is None else w._row(w.resolve_alias(invocation_id))


def invocation(engine: Engine, invocation_id: str, *, exact: bool = False) -> dict[str, Any]:
    """One invocation's row and journal; `exact` adds them byte for byte (``processor journal --export``)."""
    p, w, row = _find(engine, invocation_id)
    if w is None:
        raise NotFound(f"invocation {invocation_id} lives on partition {p}, which this instance does not own "
                       f"(it owns {sorted(engine.workers)})")
    if row is None:
        raise NotFound(f"no invocation {invocation_id} on partition {p} (never created, or finished and purged)")
    inv = row.id
    rt = w.runtimes.get(inv)
    journal = rt.core.journal() if rt is not None else w._journal(inv)
    return {**row_dict(p, row, full=True), "in_memory": rt is not None,
            "journal": [entry_dict(e) for e in journal]} | ({"exact": export.exact(row, journal)} if exact else {})


def action_check(engine: Engine, invocation_id: str, action: str) -> tuple[int, bool]:
    """Before an action's command is produced: the invocation's partition and whether this instance
    owns it; raises NotFound where this instance owns that partition and has no such invocation,
    Conflict where the action cannot apply to it. An invocation on a partition owned elsewhere is
    not checked: its owner decides."""
    p, w, row = _find(engine, invocation_id)
    if w is None:
        return p, False
    if row is None:
        raise NotFound(f"no invocation {invocation_id} on partition {p}")
    if action in ("cancel", "kill") and row.status.terminal:
        raise Conflict(f"invocation {invocation_id} already {row.status.value}")
    if action == "purge" and not row.status.terminal:
        raise Conflict(f"invocation {invocation_id} is {row.status.value}: only a finished one can be purged")
    if action == "retry" and row.status not in (Status.BACKING_OFF, Status.PAUSED):
        raise Conflict(f"invocation {invocation_id} is {row.status.value}: only a backing-off or paused one "
                       "can be retried")
    return p, True


# -- state and timers ------------------------------------------------------------------------------

def object_state(engine: Engine, obj: str, key: str) -> dict[str, Any]:
    """The state entries of (object or workflow `obj`, `key`), on the partition its key routes to."""
    p = routing.partition_for_key(key.encode(), engine.partitions_total) if engine.partitions_total else -1
    w = engine.workers.get(p)
    if w is None:
        raise NotFound(f"key {key!r} lives on partition {p}, which this instance does not own "
                       f"(it owns {sorted(engine.workers)})")
    state = {keys.parse_state_key(k)[2]: value_json(v) for k, v in w.state.scan(keys.state_prefix(obj, key))}
    return {"object": obj, "key": key, "partition": p, "state": state}


def timers(engine: Engine, limit: int) -> dict[str, Any]:
    """The `limit` timers due next across the owned partitions (timer rows scan in due order)."""
    def of(p: int, w: PartitionWorker) -> Iterator[tuple[int, str, int, int, bytes]]:
        for n, (k, v) in enumerate(w.state.scan(keys.TIMER)):
            if n >= limit:
                return
            due, inv, seq = keys.parse_timer_key(k)
            yield due, inv, seq, p, v
    out = []
    for due, inv, seq, p, payload in heapq.merge(*(of(p, w) for p, w in sorted(engine.workers.items()))):
        kind, attempt, _ = decode_timer(payload)
        out.append({"due_ms": due, "due": _iso(due), "invocation_id": inv, "seq": seq, "partition": p,
                    "kind": kind.value, "attempt": attempt})
        if len(out) >= limit:
            break
    return {"partitions": sorted(engine.workers), "timers": out}


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


# -- the cycle and the partitions ------------------------------------------------------------------

def cycle(engine: Engine) -> dict[str, Any]:
    """The open cycle (what the next transaction would hold), and how recent cycles went."""
    parts = {}
    for p, w in sorted(engine.workers.items()):
        parts[str(p)] = {
            "open_records": w.open_records(), "pending_outputs": len(w._outputs),
            "pending_releases": len(w._releases), "unsaved_invocations": len(w._dirty),
            "sealed_overlays": w.state.sealed(), "held_records": len(w._held),
            "in_memory": w.in_memory(), "queued": w.queued, "step_bodies_running": w.bodies_running,
            "uncommitted_offsets": {t: o for t, o in w._positions.items() if w._committed_positions.get(t) != o}}
    busy = engine.health.busy_since
    return {
        "commit_in_flight": engine._commit_lock.locked(), "draining": engine._draining,
        "cycle_running_s": None if busy is None else round(time.monotonic() - busy, 3),
        "commits": engine.commits, "rebuilds": engine.rebuilds, "rebuilding": engine._rebuilding,
        "last_cycle_s": {k: round(v, 6) for k, v in engine.timings.last().items()},
        "last_cycle_records": engine.timings.records[-1] if engine.timings.records else None,
        "summary": engine.timings.summary(), "partitions": parts}


def lag(engine: Engine) -> dict[tuple[str, int], int]:
    """Records between the group's committed offset and the latest stable offset (from the
    consumer's statistics, every 5 s), per owned topic partition where both are known."""
    out = {}
    stable = engine.stable_offsets
    for p, w in engine.workers.items():
        for t, committed in w.committed_offsets().items():
            end = stable.get((t, p))
            if end is not None:
                out[(t, p)] = max(0, end - committed)
    return out


def partitions(engine: Engine) -> dict[str, Any]:
    lags = lag(engine)
    out = []
    for p in sorted(engine._owned | set(engine.workers) | set(engine._restoring) | set(engine._restored)):
        w = engine.workers.get(p)
        r = engine._restoring.get(p) or engine._restored.get(p)
        d: dict[str, Any] = {"partition": p, "owned": p in engine._owned,
                             "phase": "active" if w is not None else "restoring" if p in engine._restoring
                             else "restored" if p in engine._restored else "assigned"}
        if r is not None:
            d["restore"] = {"records_applied": r.done, "records_left": r.left, "records_per_s": round(r.rate, 1),
                            "running_s": round(time.monotonic() - r.started, 1)}
        if w is not None:
            d["committed_offsets"] = w.committed_offsets()
            d["lag"] = {t: n for (t, q), n in lags.items() if q == p}
            d["timers_in_window"] = w.timers.in_memory()
        out.append(d)
    return {"instance_id": engine.instance_id, "app": engine.app.name, "partitions_total": engine.partitions_total,
            "ready": engine.ready.is_set(), "partitions": out}


# -- metrics ---------------------------------------------------------------------------------------

STORED_EVERY_S = 10.0  # how often a scrape recounts the stores (a key scan per partition)
_stored: dict[int, tuple[float, dict[str, int]]] = {}  # id(engine) -> (when, counts)


def stored_counts(engine: Engine) -> dict[str, int]:
    """What the owned partitions' stores hold as of their last commit, recounted at most every
    STORED_EVERY_S: pending timers, and in-flight invocations not in memory (suspended on a timer,
    call, awakeable or promise, or backing off or paused and evicted). Runs on the scraping thread:
    LMDB readers do not block the engine's writer."""
    now = time.monotonic()
    cached = _stored.get(id(engine))
    if cached is not None and now - cached[0] < STORED_EVERY_S:
        return cached[1]
    timers = out = 0
    for w in list(engine.workers.values()):
        try:
            timers += w.state.store.count(keys.TIMER)
            in_flight = w.state.store.count(keys.ACTIVE) + w.state.store.count(keys.INBOX)
        except Exception:  # the partition was revoked (its store closed) meanwhile: the next scrape counts
            continue
        durable = w._durable
        in_memory = sum(1 for i in list(w.runtimes) if i in durable)
        out += max(0, in_flight - in_memory - w.queued)
    counts = {"timers": timers, "out_of_memory": out}
    _stored[id(engine)] = (now, counts)
    return counts


def metrics_snapshot(engine: Engine) -> dict[str, Any]:
    """Copies of every counter the collector exposes (``processor/_admin/metrics.py``)."""
    ws = list(engine.workers.values())
    s = engine.stats
    step_log = engine._steps
    return {
        "records_in": dict(engine.records_in),
        "created": dict(s.created_by), "completed": dict(s.completed_by), "failed": dict(s.failed_by),
        "paused": dict(s.paused_by), "dead_lettered": dict(s.dead_lettered_by), "backing_off": dict(s.backing_off_by),
        "dead_letters": dict(s.dead_letters), "steps_failed": s.steps_failed,
        "step_attempts": s.step_attempts.snapshot(),
        "step_seconds": {k: b.snapshot() for k, b in list(s.step_seconds.items())},
        "step_ack": None if step_log is None else step_log.ack_seconds.snapshot(),
        "phases": {p: b.snapshot() for p, b in engine.timings.buckets.items()},
        "cycle_records": engine.timings.record_buckets.snapshot(),
        "commits": engine.commits, "rebuilds": engine.rebuilds,
        "forwarded": dict(FORWARDS.counts),
        "in_memory": sum(w.in_memory() for w in ws), "queued": sum(w.queued for w in ws),
        "suspended_total": engine._trimmer.evicted_total,
        "timers_in_window": sum(w.timers.in_memory() for w in ws),
        "stored": stored_counts(engine),
        "redelivered": sum(w.redelivered for w in ws),
        "rebalances": dict(engine.rebalances), "txn_failures": dict(engine.txn_failures),
        "fences": dict(engine.fences),
        "restores": {p: (r.done, r.left, r.rate) for p, r in engine._restoring.items()},
        "owned": len(engine._owned), "active": len(ws), "ready": readiness(engine)[0],
        "lag": lag(engine)}
