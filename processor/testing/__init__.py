"""A testing kit for apps: run handlers in-process without Kafka, skip time forward, replay journals.

    from processor.testing import TestRuntime

    with TestRuntime(app, always_replay=True) as rt:
        rt.send("orders", {"total": 5, ...}, key="o-1")
        assert rt.emitted("order-events")[0]["status"] == "placed"

``TestRuntime`` drives the engine's own partition workers and commit cycle over in-memory twins of
Kafka and the stores, on a clock the test moves (``advance``). ``replay`` replays journals exported
from a running app (``processor journal --export FILE``) against the code under test and reports
where they diverge. See docs/testing.md.
"""

from __future__ import annotations

from processor.testing._replay import Divergence, ReplayReport, replay
from processor.testing._runtime import Emitted, JournalEntry, NotFinished, ReplayDivergence, TestRuntime

__all__ = ["Divergence", "Emitted", "JournalEntry", "NotFinished", "ReplayDivergence", "ReplayReport",
           "TestRuntime", "replay"]
