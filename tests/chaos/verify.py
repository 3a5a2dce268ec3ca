"""The chaos verifier: recompute from the input topics what the outputs and the final state must be,
and compare. The checks are pure functions over decoded records (unit-tested in test_verify.py); the
Kafka and LMDB reads that feed them are at the bottom."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from processor._engine.records import InvocationRow, Status
from processor._engine.routing import partition_for_key
from processor._serde import JsonSerde
from processor.state import keys as store_keys
from processor.state.changelog import restore
from processor.state.store import PartitionStore
from tests.chaos.workload import CLIENT_LOG

EXAMPLES = 6  # evidence lines per kind of violation


@dataclass(frozen=True, slots=True, kw_only=True)
class Out:
    """One output record: where it was read and what it says."""

    partition: int
    offset: int
    value: dict[str, Any]


@dataclass(slots=True)
class Verdict:
    """What the verifier found. `violations` are one line each, with a few examples as evidence."""

    violations: list[str] = field(default_factory=list)
    duplicates: int = 0  # outputs beyond the first for one input
    losses: int = 0      # inputs with no output
    phantoms: int = 0    # outputs of no input
    inputs: Counter[str] = field(default_factory=Counter)

    def fail(self, what: str, examples: list[str] | None = None) -> None:
        ex = examples or []
        more = f" (+{len(ex) - EXAMPLES} more)" if len(ex) > EXAMPLES else ""
        self.violations.append(what + ("".join(f"\n      {e}" for e in ex[:EXAMPLES]) + more if ex else ""))


def _inv_partition(inv: Any) -> str:
    """The partition an invocation id names (inv-<p>-...), for evidence lines."""
    parts = str(inv).split("-")
    return parts[1] if len(parts) > 2 and parts[0] == "inv" else "?"


def check_outputs(*, counts: list[tuple[str, dict[str, Any]]], sleeps: list[dict[str, Any]],
                  asks: list[dict[str, Any]], outputs: list[Out], partitions: int) -> Verdict:
    """Every input has exactly one output; per key counts are 1..n in output order; every call got the
    right answer and every callee counted its calls 1..m."""
    v = Verdict()
    by_kind: dict[str, list[Out]] = defaultdict(list)
    for o in sorted(outputs, key=lambda o: (o.partition, o.offset)):
        by_kind[str(o.value.get("kind"))].append(o)
    unknown = [o for k, os in by_kind.items() if k not in ("count", "sleep", "call") for o in os]
    if unknown:
        v.phantoms += len(unknown)
        v.fail(f"{len(unknown)} outputs of an unknown kind", [str(o.value) for o in unknown])

    expected_ids = {"count": Counter(str(e["id"]) for _, e in counts),
                    "sleep": Counter(str(e["id"]) for e in sleeps),
                    "call": Counter(str(e["id"]) for e in asks)}
    for kind, want in expected_ids.items():
        v.inputs[kind] = sum(want.values())
        got: dict[str, list[Out]] = defaultdict(list)
        for o in by_kind.get(kind, []):
            got[str(o.value.get("id"))].append(o)
        dups = {i: os for i, os in got.items() if i in want and len(os) > want[i]}
        lost = sorted(i for i in want if len(got.get(i, [])) < want[i])
        phantom = sorted(i for i in got if i not in want)
        v.duplicates += sum(len(os) - want[i] for i, os in dups.items())
        v.losses += sum(want[i] - len(got.get(i, [])) for i in lost)
        v.phantoms += sum(len(got[i]) for i in phantom)
        if dups:
            v.fail(f"{kind}: {len(dups)} inputs with more than one output (read_committed)",
                   [f"{i}: " + "; ".join(_where(o) for o in os) for i, os in sorted(dups.items())])
        if lost:
            v.fail(f"{kind}: {len(lost)} inputs with no output", lost)
        if phantom:
            v.fail(f"{kind}: {len(phantom)} outputs whose input is not on the input topic", phantom)

    # Per key counts: the outputs of key k are on one partition (the engine emits with key=k), in
    # commit order, and must read 1, 2, ..., n where n is how many records of k both producers wrote.
    n_by_key = Counter(k for k, _ in counts)
    seq: dict[str, list[Out]] = defaultdict(list)
    for o in by_kind.get("count", []):
        seq[str(o.value.get("key"))].append(o)
    bad = []
    for k in sorted(set(n_by_key) | set(seq)):
        got_counts = [int(o.value.get("count", -1)) for o in seq.get(k, [])]
        if got_counts != list(range(1, n_by_key[k] + 1)):
            outs = seq.get(k, [])
            first = next((i for i, c in enumerate(got_counts) if c != i + 1), len(got_counts))
            around = "; ".join(f"{_where(o)} inv={o.value.get('inv')} pid={o.value.get('pid')} t={o.value.get('t')}"
                               for o in outs[max(0, first - 2):first + 2])
            bad.append(f"{k} (partition {partition_for_key(k.encode(), partitions)}): {n_by_key[k]} inputs, "
                       f"counts {_runs(got_counts, 160)}; emitted by partitions "
                       f"{sorted({_inv_partition(o.value.get('inv')) for o in outs})}; around the first "
                       f"wrong one: {around}")
    if bad:
        v.fail(f"count: {len(bad)} keys whose counts are not 1..n in order", bad)

    ask_by_id = {str(e["id"]): e for e in asks}
    wrong = []
    nth: dict[str, list[int]] = defaultdict(list)
    for o in by_kind.get("call", []):
        e = ask_by_id.get(str(o.value.get("id")))
        answer = o.value.get("answer") or {}
        if e is None:
            continue
        if answer.get("square") != e["x"] * e["x"] or o.value.get("callee") != e["callee"]:
            wrong.append(f"{e['id']}: asked {e['callee']} x={e['x']}, got {o.value}")
        nth[str(e["callee"])].append(int(answer.get("nth", -1)))
    if wrong:
        v.fail(f"call: {len(wrong)} wrong answers", wrong)
    calls_per_callee = Counter(str(e["callee"]) for e in asks)
    bad_nth = [f"{c}: {calls_per_callee[c]} calls, answered as {_runs(sorted(ns))}"
               for c, ns in sorted(nth.items()) if sorted(ns) != list(range(1, len(ns) + 1))]
    if bad_nth:
        v.fail(f"call: {len(bad_nth)} callees whose per-key call counts are not 1..m", bad_nth)
    return v


def check_state(verdict: Verdict, *, counts: list[tuple[str, dict[str, Any]]], asks: list[dict[str, Any]],
                state: list[tuple[int, str, str, str, Any]], owned: dict[int, str], partitions: int) -> None:
    """The final state (materialized from the changelog; `owned` names where each partition was read):
    `count` of every counter key and `answered` of every callee equal what the inputs make them, each on
    the key's own (murmur2) partition only."""
    missing = sorted(set(range(partitions)) - set(owned))
    if missing:
        verdict.fail(f"state: partitions {missing} owned by no instance at the end")
    want: dict[tuple[str, str, str], Any] = {("counter", k, "count"): n
                                             for k, n in Counter(k for k, _ in counts).items()}
    want |= {("answerer", c, "answered"): m for c, m in Counter(str(e["callee"]) for e in asks).items()}
    got: dict[tuple[str, str, str], list[tuple[int, Any]]] = defaultdict(list)
    for part, obj, key, name, value in state:
        if (obj, name) in (("counter", "count"), ("answerer", "answered")):
            got[(obj, key, name)].append((part, value))
    wrong, split = [], []
    for (obj, key, name), n in sorted(want.items()):
        home = partition_for_key(key.encode(), partitions)
        found = got.get((obj, key, name), [])
        at_home = [val for part, val in found if part == home]
        if len(found) > len(at_home):
            split.append(f"{obj}/{key}: state on partitions {sorted(p for p, _ in found)}, key lives on {home}"
                         f" ({', '.join(f'p{p}={val}' for p, val in found)})")
        if at_home != [n] and home in owned:
            wrong.append(f"{obj}/{key} {name} = {at_home[0] if at_home else None} (want {n}) on partition {home}"
                         f" ({owned[home]})")
    if wrong:
        verdict.fail(f"state: {len(wrong)} keys whose final state is wrong", wrong)
    if split:
        verdict.fail(f"state: {len(split)} keys with state on a partition that does not own them", split)


def check_invocations(verdict: Verdict, rows: list[tuple[int, InvocationRow]]) -> None:
    """After the outputs settled, every invocation the final stores hold is finished and none failed."""
    open_rows = [f"p{p} {r.id} {r.service}/{r.handler} key={r.key} {r.status.value}"
                 f"{' ' + r.failure.type + ': ' + r.failure.message if r.failure else ''}"
                 for p, r in rows if r.status is not Status.COMPLETED]
    if open_rows:
        verdict.fail(f"invocations: {len(open_rows)} not completed at the end", open_rows)


def _where(o: Out) -> str:
    by = f" by {o.value['by']}" if "by" in o.value else ""
    return f"out p{o.partition}@{o.offset}{by} (partition {_inv_partition(o.value.get('inv'))}) {_brief(o.value)}"


def _brief(value: dict[str, Any]) -> str:
    return ", ".join(f"{k}={value[k]}" for k in ("key", "count", "callee", "ms") if k in value)


def _runs(xs: list[int], limit: int = 1000) -> str:
    """[1,2,3,5,5,6] -> '1-3,5,5-6' (compact evidence for long count sequences), cut at `limit` chars."""
    text = _runs_full(xs)
    return text if len(text) <= limit else text[:limit].rsplit(",", 1)[0] + ",..."


def _runs_full(xs: list[int]) -> str:
    if not xs:
        return "[]"
    out, start, prev = [], xs[0], xs[0]
    for x in xs[1:]:
        if x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = x
    out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(out)


# -- reads ---------------------------------------------------------------------------------------


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "broker.address.family": "v4", "logger": CLIENT_LOG,
                     "group.id": group,
                     "enable.auto.commit": False, "isolation.level": "read_committed",
                     "auto.offset.reset": "earliest"})


def read_topic(bootstrap: str, topic: str, partitions: int, *, start: dict[int, int] | None = None,
               timeout: float = 60.0) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """(partition, offset, key, value) of every committed record of `topic` from `start` (default the
    beginning) up to the end, failing if the end is not reached within `timeout`."""
    c = _consumer(bootstrap, f"chaos-verify-{time.time_ns()}")
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=15, cached=False)[1]
                for p in range(partitions)}
        begin = start or {}
        c.assign([TopicPartition(topic, p, max(begin.get(p, 0), 0)) for p in range(partitions)])
        todo = {p for p in range(partitions) if ends[p] > max(begin.get(p, 0), 0)}
        out: list[tuple[int, int, bytes | None, bytes | None]] = []
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                pos = {tp.partition: tp.offset for tp in c.position([TopicPartition(topic, p) for p in todo])}
                raise AssertionError(f"reading {topic}: positions {pos} short of ends {ends} after {timeout}s "
                                     f"(an open transaction pinning the last stable offset?)")
            for m in c.consume(1000, 0.2):
                err = m.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    continue
                out.append((m.partition() or 0, m.offset() or 0, m.key(), m.value()))
            for tp in c.position([TopicPartition(topic, p) for p in list(todo)]):
                if tp.offset >= ends[tp.partition]:
                    todo.discard(tp.partition)
        return out
    finally:
        c.close()


def unconsumed(bootstrap: str, group: str, topics: list[str], partitions: int) -> dict[str, int]:
    """Committed records at or after the group's committed offset, per "topic[p]": the consumer lag
    that matters (a transactional topic's end offset counts a commit marker the group never consumes)."""
    c = _consumer(bootstrap, group)  # committed() does not join the group
    try:
        committed = c.committed([TopicPartition(t, p) for t in topics for p in range(partitions)], timeout=30)
    finally:
        c.close()
    lag: dict[str, int] = {}
    for t in topics:
        start = {tp.partition: tp.offset for tp in committed if tp.topic == t}
        left = read_topic(bootstrap, t, partitions, start={p: (o if o >= 0 else 0) for p, o in start.items()})
        for p, _offset, _key, _value in left:
            lag[f"{t}[{p}]"] = lag.get(f"{t}[{p}]", 0) + 1
    return lag


def decode(records: list[tuple[int, int, bytes | None, bytes | None]]) -> list[tuple[int, int, str, dict[str, Any]]]:
    return [(p, o, (k or b"").decode(), orjson.loads(v or b"{}")) for p, o, k, v in records]


def read_owned_state(state_dir: Path, app: str, partitions: set[int]
                     ) -> tuple[list[tuple[int, str, str, str, Any]], list[tuple[int, InvocationRow]]]:
    """(partition, object, key, name, value) of every state entry, and every invocation row, in the
    stores of `partitions` under `state_dir` (read-only)."""
    state: list[tuple[int, str, str, str, Any]] = []
    rows: list[tuple[int, InvocationRow]] = []
    for p in sorted(partitions):
        path = state_dir / app / str(p)
        if not (path / "data.mdb").exists():
            continue
        store = PartitionStore.open(path, readonly=True)
        try:
            _read_store(store, p, state, rows)
        finally:
            store.close()
    return state, rows


def materialize_state(bootstrap: str, app: str, partitions: int, work: Path
                      ) -> tuple[list[tuple[int, str, str, str, Any]], list[tuple[int, InvocationRow]]]:
    """What :func:`read_owned_state` returns, but for every partition as its changelog holds it: each is
    restored into a fresh store under `work`, as a new owner would. Unlike the instances' own stores,
    this does not depend on who owned what when the instances were stopped (a last rebalance may still
    have been restoring)."""
    state: list[tuple[int, str, str, str, Any]] = []
    rows: list[tuple[int, InvocationRow]] = []
    for p in range(partitions):
        store = PartitionStore.open(work / str(p))
        try:
            restore(store, consumer_config={"bootstrap.servers": bootstrap}, topic=f"{app}.changelog",
                    partition=p, deadline_s=120)
            _read_store(store, p, state, rows)
        finally:
            store.close()
    return state, rows


def _read_store(store: PartitionStore, p: int, state: list[tuple[int, str, str, str, Any]],
                rows: list[tuple[int, InvocationRow]]) -> None:
    serde = JsonSerde()
    for k, v in store.scan(store_keys.STATE):
        obj, key, name = store_keys.parse_state_key(k)
        state.append((p, obj, key, name, serde.deserialize(v)))
    rows.extend((p, InvocationRow.decode(v)) for _, v in store.scan(store_keys.INVOCATION))
