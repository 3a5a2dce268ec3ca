"""Merging the instances' answers into one view of the app (pure: answers in, a view out).

Each instance answers only for partitions it owns and has active (the admin API never serves a
store left behind by a partition that moved). Two instances can still both claim a partition for a
moment: a frozen instance whose partitions moved (a zombie) answers until it learns so. The
consumer group's assignment decides then: a partition's rows come only from the instance the group
assigned it to; where the group assigned it to nobody (a rebalance in progress), from its one
claimant, or — two claimants — from none, and the partition is reported as not covered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from processor._cluster.fanout import Answer


@dataclass(frozen=True, slots=True, kw_only=True)
class Coverage:
    """Which partitions each instance's answer is believed for, and what was not covered."""

    accepted: Mapping[str, frozenset[int]]   # instance id -> partitions taken from its answer
    missing: tuple[int, ...]                 # partitions no instance answered for
    notes: tuple[str, ...]                   # instances that did not answer, claims set aside


def coverage(answers: Sequence[Answer], owners: Mapping[int, str] | None, partitions_total: int) -> Coverage:
    """Decide, per partition, whose answer counts (module docstring)."""
    notes: list[str] = []
    claims: dict[int, list[str]] = {}
    for a in answers:
        iid = a.instance.instance_id
        if not a.ok:
            notes.append(f"instance {iid} did not answer: {a.message}")
            continue
        for p in a.body.get("partitions", ()):
            claims.setdefault(int(p), []).append(iid)
    accepted: dict[str, set[int]] = {a.instance.instance_id: set() for a in answers}
    for p, who in sorted(claims.items()):
        owner = None if owners is None else owners.get(p)
        if owner is not None:
            if owner in who:
                accepted[owner].add(p)
            for other in who:
                if other != owner:
                    notes.append(f"partition {p}: instance {other} still serves it, but the group assigned it to "
                                 f"{owner}; its rows are not shown")
        elif len(who) == 1:
            accepted[who[0]].add(p)
        else:
            notes.append(f"partition {p}: claimed by {', '.join(sorted(who))} while the group assigns it to "
                         "nobody (a rebalance); not shown")
    covered = set().union(*accepted.values()) if accepted else set()
    missing = tuple(p for p in range(partitions_total) if p not in covered)
    return Coverage(accepted={k: frozenset(v) for k, v in accepted.items()}, missing=missing, notes=tuple(notes))


def _taken(answers: Sequence[Answer], cov: Coverage, field: str) -> Iterable[dict[str, Any]]:
    for a in answers:
        if not a.ok:
            continue
        mine = cov.accepted.get(a.instance.instance_id, frozenset())
        for row in a.body.get(field, ()):
            if int(row.get("partition", -1)) in mine:
                yield {**row, "instance": a.instance.instance_id}


def invocations(answers: Sequence[Answer], cov: Coverage, *, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The rows of accepted partitions, oldest first, at most `limit`; and whether every listing was
    complete (an instance stops decoding at its scan budget; docs/operate.md)."""
    rows = sorted(_taken(answers, cov, "invocations"), key=lambda r: (r.get("created", ""), r["partition"], r["id"]))
    complete = all(a.body.get("complete", True) for a in answers if a.ok)
    return rows[:limit], complete


def timers(answers: Sequence[Answer], cov: Coverage, *, limit: int) -> list[dict[str, Any]]:
    """The timers of accepted partitions due next, at most `limit`."""
    rows = sorted(_taken(answers, cov, "timers"), key=lambda t: (t["due_ms"], t["partition"], t["invocation_id"]))
    return rows[:limit]


def owner_answer(answers: Sequence[Answer], partition: int, cov: Coverage) -> Answer | None:
    """The answer of the instance whose answer counts for `partition` (None: nobody's does)."""
    for a in answers:
        if partition in cov.accepted.get(a.instance.instance_id, frozenset()):
            return a
    return None
