"""Test-only crash points. ``PROCESSOR_TEST_FAULTS="after_kafka_commit=3"`` SIGKILLs the process the
3rd time the engine passes that point. Unset in production: then every check is one dict lookup."""

from __future__ import annotations

import os
import signal

_PLAN: dict[str, int] = {}
for _item in filter(None, os.environ.get("PROCESSOR_TEST_FAULTS", "").split(",")):
    _name, _, _n = _item.partition("=")
    _PLAN[_name.strip()] = int(_n or "1")


def point(name: str) -> None:
    """Pass the crash point `name`; dies here by SIGKILL if the plan says so."""
    left = _PLAN.get(name)
    if left is None:
        return
    if left <= 1:
        os.kill(os.getpid(), signal.SIGKILL)
    _PLAN[name] = left - 1
