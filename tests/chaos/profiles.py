"""The chaos suite's profiles (short for CI, long on request) and how the environment picks one:
PROCESSOR_CHAOS, PROCESSOR_CHAOS_FAULTS and PROCESSOR_CHAOS_SEED (docs/chaos.md)."""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from tests.chaos.workload import Rates

KINDS = ("kill", "kill_wipe", "freeze", "down", "broker_stop", "broker_kill")
SESSION_TIMEOUT = 6.0  # the engine's consumer session timeout (docs/architecture.md)


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    name: str
    instances: int
    partitions: int
    faults: Mapping[str, int]
    rates: Rates
    keys: int = 24
    callees: int = 12
    pause: tuple[float, float] = (1.0, 5.0)      # after recovery, before the next fault
    freeze: tuple[float, float] = (8.0, 15.0)    # SIGSTOP .. SIGCONT (> SESSION_TIMEOUT)
    down: tuple[float, float] = (10.0, 15.0)     # SIGKILL .. restart, long enough for partitions to move
    outage: tuple[float, float] = (5.0, 12.0)    # broker stop/kill .. start
    recover_timeout: float = 120.0              # from a fault's end until outputs flow on every partition
    settle_timeout: float = 180.0               # after the workload stops, until every input has its output
    budget: float = 600.0                       # the whole fault schedule; no fault is started after it

    @property
    def fault_count(self) -> int:
        return sum(self.faults.values())


SHORT = Profile(name="short", instances=3, partitions=6, budget=300.0, settle_timeout=90.0,
                faults=MappingProxyType({"kill": 3, "kill_wipe": 2, "freeze": 3, "down": 2,
                                         "broker_stop": 1, "broker_kill": 1}),
                freeze=(8.0, 11.0), down=(10.0, 12.0), outage=(5.0, 9.0), pause=(1.0, 3.0),
                rates=Rates(counts=6.0, sleeps=1.0, asks=0.5, foreign_share=0.2))
LONG = Profile(name="long", instances=3, partitions=6, budget=3600.0,
               faults=MappingProxyType({"kill": 16, "kill_wipe": 8, "freeze": 10, "down": 8,
                                        "broker_stop": 4, "broker_kill": 4}),
               rates=Rates(counts=8.0, sleeps=1.0, asks=0.6, foreign_share=0.2))
PROFILES = {"short": SHORT, "long": LONG}


def profile_from_env() -> Profile:
    """PROCESSOR_CHAOS=short (default) or long."""
    name = os.environ.get("PROCESSOR_CHAOS", "short") or "short"
    if name not in PROFILES:
        raise ValueError(f"PROCESSOR_CHAOS={name!r}: use one of {sorted(PROFILES)}")
    return faults_from_env(PROFILES[name])


def faults_from_env(profile: Profile) -> Profile:
    """PROCESSOR_CHAOS_FAULTS="kill=4,freeze=2" replaces the profile's fault mix (a diagnosis aid: e.g.
    leave out broker restarts to see what else fails while they still hang the engine).
    PROCESSOR_CHAOS_FOREIGN_SHARE=0 turns the non-murmur2 producer off (or sets its share of the
    counter records), to look at the other invariants while forwarding is not built."""
    spec = os.environ.get("PROCESSOR_CHAOS_FAULTS", "").strip()
    share = os.environ.get("PROCESSOR_CHAOS_FOREIGN_SHARE", "").strip()
    if spec:
        faults: dict[str, int] = {}
        for part in spec.split(","):
            kind, _, n = part.strip().partition("=")
            if kind not in KINDS or not n.isdigit():
                raise ValueError(f"PROCESSOR_CHAOS_FAULTS: {part!r} is not KIND=N with KIND one of {KINDS}")
            faults[kind] = int(n)
        profile = dataclasses.replace(profile, name=f"{profile.name}+faults", faults=MappingProxyType(faults))
    if share:
        rates = dataclasses.replace(profile.rates, foreign_share=float(share))
        profile = dataclasses.replace(profile, name=f"{profile.name}+foreign={share}", rates=rates)
    return profile


def seed_from_env() -> int:
    """PROCESSOR_CHAOS_SEED replays a run's schedule and workload; otherwise a fresh seed."""
    s = os.environ.get("PROCESSOR_CHAOS_SEED")
    return int(s) if s else random.SystemRandom().randrange(1 << 31)
