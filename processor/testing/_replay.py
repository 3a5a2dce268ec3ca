"""The replayer: journals recorded by a running app (``processor journal --export FILE``) replayed
against the code under test, so that a change that breaks invocations in flight fails in CI instead
of pausing them after the deploy.

Each invocation is replayed by the engine's own runtime on a partition worker of its own, over a
store that holds its row and journal: the same replay a restarted processor does, and the same
divergence check (``NondeterminismError``). The replay stops where the journal ends — at the first
action past it, or at a step still being retried — so no step body of the new code runs. It also
flags code that finishes before reaching the end of the journal, or waits where the journal goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from processor._app import App
from processor._engine.core import EntryKind, Execute, Failure, Replay, encode_chunk
from processor._engine.invocation import InvocationRuntime
from processor._engine.partition import PartitionWorker
from processor._engine.records import Status
from processor._errors import _Abandon
from processor._journal_export import ExportedJournal, read_lines
from processor.state import keys
from processor.state.memory import MemoryStore
from processor.testing._runtime import ReplayDivergence

_TURNS = 1000  # loop turns a replay may take (each replayed action resolves within one or two)
_STILL = 50  # turns without a new action after which the handler waits for what its journal has pending


@dataclass(frozen=True, slots=True, kw_only=True)
class Divergence:
    """One recorded invocation the code under test does not replay."""

    invocation_id: str
    target: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayReport:
    """What ``replay`` found: how many invocations it replayed, and which of them diverged."""

    replayed: int
    divergences: tuple[Divergence, ...]

    @property
    def ok(self) -> bool:
        return not self.divergences

    def check(self) -> None:
        """Raise :class:`ReplayDivergence` listing every divergence, if there is one."""
        if self.divergences:
            lines = [f"- {d.invocation_id} ({d.target}): {d.reason}" for d in self.divergences]
            raise ReplayDivergence(f"{len(self.divergences)} of {self.replayed} recorded invocation(s) diverge:\n"
                                   + "\n".join(lines))


def replay(app: App, journals: str | Path | Iterable[str | bytes]) -> ReplayReport:
    """Replay every invocation in `journals` (a file written by ``processor journal --export``, or
    its lines) against `app`'s handlers, each up to the end of its journal. Runs its own event loop:
    call it from synchronous code (a plain pytest test)."""
    if isinstance(journals, (str, Path)):
        with Path(journals).open("rb") as f:
            recorded = list(read_lines(f))
    else:
        recorded = list(read_lines(journals))
    return asyncio.run(_replay_all(app, recorded))


async def _replay_all(app: App, recorded: list[ExportedJournal]) -> ReplayReport:
    found = []
    with ThreadPoolExecutor(1) as pool:
        for ex in recorded:
            reason = await _replay_one(app, ex, pool)
            if reason is not None:
                found.append(Divergence(invocation_id=ex.row.id, target=ex.row.target, reason=reason))
    return ReplayReport(replayed=len(recorded), divergences=tuple(found))


class _UpToTheEnd(InvocationRuntime):
    """A runtime that stops (quietly) at the first action past its journal, or at a step still
    being retried: what would run for real there is new work, not replay."""

    reached_end = False

    def journal_call(self, kind: EntryKind, name: str) -> Replay | Execute:
        d = super().journal_call(kind, name)
        if isinstance(d, Execute) and (d.retrying is None or d.retrying.kind is EntryKind.RUN):
            self.reached_end = True
            self.alive = False  # nothing of it reaches the store from here on
            raise _Abandon()
        return d


class _Sandbox(PartitionWorker):
    runtime_class = _UpToTheEnd
    paused_reason: str | None = None
    finished_rt: InvocationRuntime | None = None

    def paused(self, rt: InvocationRuntime, reason: str) -> None:
        self.paused_reason = reason
        super().paused(rt, reason)

    def finished(self, rt: InvocationRuntime, *, result: bytes | None, failure: Failure | None) -> None:
        self.finished_rt = rt
        super().finished(rt, result=result, failure=failure)


async def _replay_one(app: App, ex: ExportedJournal, pool: ThreadPoolExecutor) -> str | None:
    """Why `ex` diverges under `app`, or None if it replays to the end of its journal."""
    row = ex.row
    h = app.handler(row.target)
    if h is None:
        return f"no handler {row.target} in this code"
    if not ex.entries:
        return None  # nothing recorded to replay against
    store = MemoryStore()
    running = replace(row, status=Status.RUNNING, paused_reason=None)
    store.apply([(keys.invocation_key(row.id), running.encode()),
                 (keys.journal_key(row.id, 0), encode_chunk(ex.entries))], 0)
    total = max(app.config.partitions or 1, ex.partition + 1)
    w = _Sandbox(app=app, partition=ex.partition, partitions_total=total, store=store, step_executor=pool,
                 on_work=lambda: None)
    w.start(running, fresh=False)
    rt = w.runtimes.get(row.id)
    assert isinstance(rt, _UpToTheEnd)
    still, seen = 0, -1
    for _ in range(_TURNS):
        if w.paused_reason is not None or w.finished_rt is not None or rt.reached_end or still > _STILL:
            break
        still, seen = (still + 1, seen) if rt.core.next_seq == seen else (0, rt.core.next_seq)
        await asyncio.sleep(0)
    if w.paused_reason is not None:
        return w.paused_reason
    if rt.reached_end:
        return None
    rt.drop()
    issued, last = rt.core.next_seq, ex.entries[-1]
    if issued <= last.seq:
        unseen = next(e for e in ex.entries if e.seq >= issued)
        how = "finished" if w.finished_rt is not None else "waits"
        return (f"the code {how} after {issued} action(s), but the journal goes on with {unseen.describe()}"
                f" (up to #{last.seq})")
    return None
