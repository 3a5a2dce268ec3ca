"""What a chaos run records (faults, exits, the verdict) and how it is reported: the fault log, the
summary table and, on failure, the diagnostics drawn from the instance and broker logs."""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos import verify
from tests.chaos.profiles import KINDS, Profile
from tests.e2e.harness import ProcessorProcess


@dataclass(slots=True, kw_only=True)
class Fault:
    n: int
    kind: str
    target: str          # instance id, or "broker"
    at: float = 0.0      # wall time of injection (SIGKILL, SIGSTOP, broker stop/kill)
    ended: float = 0.0   # wall time the fault was lifted (restart issued, SIGCONT, broker ready)
    held: float = 0.0    # how long it was held (freeze, downtime, outage)
    failover: float | None = None   # injection -> every partition emits outputs of new inputs again
    recovery: float | None = None   # fault lifted -> the same
    slowest: int | None = None      # the partition that came back last


@dataclass(slots=True, kw_only=True)
class Exit:
    instance: str
    run: int
    code: int | None
    at: float
    log: Path


@dataclass(slots=True)
class Result:
    profile: Profile
    seed: int
    work: Path
    started: float = field(default_factory=time.time)
    finished: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    unexpected_exits: list[Exit] = field(default_factory=list)
    sigterm: dict[str, int | None] = field(default_factory=dict)
    verdict: verify.Verdict = field(default_factory=verify.Verdict)
    warnings: list[str] = field(default_factory=list)
    lag: dict[str, int] = field(default_factory=dict)
    instances: list[ProcessorProcess] = field(default_factory=list)
    broker_log: str = ""
    workload: str = ""

    @property
    def violations(self) -> list[str]:
        return self.verdict.violations

    def summary(self) -> str:
        lines = [f"chaos profile {self.profile.name}  seed {self.seed}  {self.profile.instances} instances  "
                 f"{self.profile.partitions} partitions  {self.finished - self.started:.0f}s  (work dir {self.work})",
                 f"{'fault':<12} {'n':>3}  {'failover p50':>12} {'max':>7}  {'recovery p50':>12} {'max':>7}  "
                 f"{'held p50':>8}  no-recovery"]
        for kind in (*KINDS, "all"):
            fs = [f for f in self.faults if kind in ("all", f.kind)]
            if not fs:
                continue
            fo = [f.failover for f in fs if f.failover is not None]
            rc = [f.recovery for f in fs if f.recovery is not None]
            lines.append(f"{kind:<12} {len(fs):>3}  {_p50(fo):>12} {_max(fo):>7}  {_p50(rc):>12} {_max(rc):>7}  "
                         f"{_p50([f.held for f in fs if f.held]):>8}  {sum(1 for f in fs if f.failover is None):>3}")
        v = self.verdict
        lines.append(f"inputs: {v.inputs['count']} counter records, {v.inputs['sleep']} sleepers, "
                     f"{v.inputs['call']} call chains   {self.workload}")
        lines.append(f"outputs: duplicates {v.duplicates}  losses {v.losses}  phantoms {v.phantoms}   "
                     f"lag {sum(self.lag.values())}")
        exits = ", ".join(f"{e.instance}#{e.run}={e.code}" for e in self.unexpected_exits) or "none"
        terms = " ".join(f"{i}={c}" for i, c in sorted(self.sigterm.items()))
        lines.append(f"instance exits not caused by a kill: {len(self.unexpected_exits)} ({exits})   "
                     f"exit codes on SIGTERM: {terms}")
        lines.append(f"violations: {len(self.violations)}")
        lines.extend(f"  - {x}" for x in self.violations)
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def fault_log(self) -> str:
        lines = [f"{'#':>3} {'fault':<12} {'target':<7} {'at':>7} {'held':>6} {'failover':>9} {'recovery':>9}  slowest"]
        for f in self.faults:
            held = f"{f.held:>5.1f}s" if f.held else "     -"
            lines.append(f"{f.n:>3} {f.kind:<12} {f.target:<7} {f.at - self.started:>6.1f}s {held} "
                         f"{fmt(f.failover):>9} {fmt(f.recovery):>9}  p{f.slowest}")
        return "\n".join(lines)

    def diagnostics(self, tail: int = 40) -> str:
        """Error lines of every instance log, the tail of each instance's last log, the broker's tail."""
        out = []
        for p in self.instances:
            for run in range(1, p.runs + 1):
                path = p.log_dir / f"{p.instance_id}-{run}.log"
                if not path.exists():
                    continue
                text = _quiet(path.read_text(errors="replace").splitlines())
                notable = [ln for ln in text if NOTABLE.search(ln)]
                if notable:
                    out.append(f"--- {path.name}: {len(notable)} notable lines (first 12)")
                    out.extend(f"    {ln[:300]}" for ln in notable[:12])
            dump = _stack_dump(p.log())
            if dump:
                out.append(f"--- Python stacks of {p.log_path.name} at SIGABRT (hung after SIGTERM)")
                out.extend(f"    {ln[:300]}" for ln in dump)
            out.append(f"--- tail of {p.log_path.name}")
            out.extend(f"    {ln[:300]}" for ln in _quiet(p.log().splitlines())[-tail:])
        out.append("--- tail of the chaos broker's server.log")
        out.extend(f"    {ln[:300]}" for ln in self.broker_log.splitlines())
        return "\n".join(out)


_NOISE = re.compile(r"(\|FAIL\||processor\.librdkafka: FAIL ).*(Connection refused|Disconnected|Connect to)")


def _quiet(lines: list[str]) -> list[str]:
    """Log lines without librdkafka's connect/disconnect chatter during broker outages (a count instead)."""
    out: list[str] = []
    dropped = 0
    for ln in lines:
        if _NOISE.search(ln):
            dropped += 1
            continue
        if dropped:
            out.append(f"({dropped} librdkafka connect/disconnect lines)")
            dropped = 0
        out.append(ln)
    if dropped:
        out.append(f"({dropped} librdkafka connect/disconnect lines)")
    return out


def _stack_dump(log: str, limit: int = 150) -> list[str]:
    """faulthandler's dump (from "Fatal Python error" on), leaving out idle pool threads (whose
    innermost frame is the executor's ``_worker`` waiting for work)."""
    lines = log.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("Fatal Python error")), None)
    if start is None:
        return []
    blocks: list[list[str]] = [[]]
    for ln in lines[start:start + 2000]:
        if ln.startswith(("Thread 0x", "Current thread 0x", "Extension modules")):
            blocks.append([])
        blocks[-1].append(ln)
    idle = [b for b in blocks if len(b) > 1 and "concurrent/futures/thread.py" in b[1] and "_worker" in b[1]]
    out = [ln for b in blocks if b not in idle for ln in b]
    return [*out[:limit], f"({len(idle)} idle pool threads left out)"]


NOTABLE = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|Error:|fatal|fenced", re.IGNORECASE)
_OWNERSHIP = re.compile(r"(assigned|released) partitions \[([\d, ]*)\]")


def owned_at_stop(log: str) -> set[int]:
    """The partitions an instance held at the end of `log`: its last assignment minus what it released
    since (the engine logs the whole assignment on assign, and what it dropped on revoke or loss)."""
    owned: set[int] = set()
    for what, numbers in _OWNERSHIP.findall(log):
        parts = {int(x) for x in numbers.split(",") if x.strip()}
        owned = parts if what == "assigned" else owned - parts
    return owned


def _p50(xs: list[float]) -> str:
    return fmt(statistics.median(xs)) if xs else "-"


def _max(xs: list[float]) -> str:
    return fmt(max(xs)) if xs else "-"


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}s"
