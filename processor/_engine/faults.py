"""Test-only fault points. ``PROCESSOR_TEST_FAULTS="after_kafka_commit=3"`` SIGKILLs the process the
3rd time the engine passes that point; ``before_send_offsets=2:hang`` blocks the thread passing it
the 2nd time for good (what a librdkafka call that ignores its timeout looks like); ``on_lost=1:sleep5``
holds it there for 5 s. Unset in
production: then every check is one dict lookup."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

_PLAN: dict[str, tuple[int, str]] = {}
for _item in filter(None, os.environ.get("PROCESSOR_TEST_FAULTS", "").split(",")):
    _name, _, _rest = _item.partition("=")
    _n, _, _action = _rest.partition(":")
    _PLAN[_name.strip()] = (int(_n or "1"), _action.strip() or "kill")


def armed(name: str) -> bool:
    """Whether the plan names `name` (to skip computing a condition for a point nobody asked for)."""
    return name in _PLAN


def point(name: str) -> None:
    """Pass the fault point `name`; dies (or hangs) here if the plan says so."""
    planned = _PLAN.get(name)
    if planned is None:
        return
    left, action = planned
    if left > 1:
        _PLAN[name] = (left - 1, action)
        return
    del _PLAN[name]
    if action.startswith("sleep"):
        print(f"fault point {name}: sleeping {action[5:]}s", file=sys.stderr, flush=True)
        time.sleep(float(action[5:]))
        return
    if action == "hang":
        print(f"fault point {name}: hanging for good", file=sys.stderr, flush=True)
        threading.Event().wait()
    os.kill(os.getpid(), signal.SIGKILL)
