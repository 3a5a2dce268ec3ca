"""Benchmark peer: Quix Streams' exactly-once per-key counter (benchmarks/quix_counter.py).

Run as its own process: `python -m benchmarks.apps.quix_counter_app`. Per event one `state.get`, one
`state.set` (RocksDB, backed by Quix's changelog topic) and one output record {"key", "count"}; the
record key is the input key. Environment: BENCH_BOOTSTRAP, BENCH_APP (consumer group), BENCH_INPUT,
BENCH_OUTPUT, BENCH_STATE_DIR, BENCH_COMMIT_INTERVAL (seconds, or "default" for Quix's own), and
BENCH_DEADLINE (a time.time()): then, or as soon as its parent (the benchmark) is gone, it stops itself.

Prints `bench: assigned <time.time()>` at its first partition assignment (the benchmark's clock starts
there, as at the engine's "assigned partitions" line) and `bench: first event <time.time()> cpu <process
CPU s>` at its first event, so the process's CPU time is charged to the events alone, not to startup.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from quixstreams import Application, State


class _Assigned(logging.Handler):
    """Prints a marker at Quix's (debug) "Rebalancing: assigning partitions" record, the first time."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.seen and str(record.msg).startswith("Rebalancing: assigning"):
            self.seen = True
            print(f"bench: assigned {record.created:.6f}", flush=True)


def _watchdog(app: Application, deadline: float, parent: int) -> None:
    """Stop the app at the deadline or when the benchmark process is gone; exit hard if that hangs."""
    while time.time() < deadline and os.getppid() == parent:
        time.sleep(0.5)
    print("bench: deadline passed or the benchmark is gone: stopping", flush=True)
    app.stop()
    time.sleep(30)  # a clean stop commits and returns well within this
    os._exit(3)


def main() -> None:
    interval = os.environ.get("BENCH_COMMIT_INTERVAL", "default")
    settings: dict[str, Any] = {} if interval == "default" else {"commit_interval": float(interval)}
    app = Application(
        broker_address=os.environ["BENCH_BOOTSTRAP"],
        consumer_group=os.environ["BENCH_APP"],
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        state_dir=os.environ["BENCH_STATE_DIR"],
        # an idle poll (after the last event) would otherwise hold the last commit up to 1 s (the default)
        consumer_poll_timeout=0.1,
        **settings,
    )
    app_log = logging.getLogger("quixstreams.app")  # its debug lines are few: rebalances and stops
    app_log.setLevel(logging.DEBUG)
    app_log.addHandler(_Assigned())
    source = app.topic(os.environ["BENCH_INPUT"], value_deserializer="json", key_deserializer="bytes")
    output = app.topic(os.environ["BENCH_OUTPUT"], value_serializer="json", key_serializer="bytes")
    first: list[float] = []

    def count(event: dict[str, Any], state: State[str, int]) -> dict[str, Any]:
        if not first:
            first.append(time.time())
            print(f"bench: first event {first[0]:.6f} cpu {time.process_time():.6f}", flush=True)
        n = state.get("count", 0) + 1
        state.set("count", n)
        return {"key": event["key"], "count": n}

    app.dataframe(source).apply(count, stateful=True).to_topic(output)
    deadline = float(os.environ["BENCH_DEADLINE"])
    threading.Thread(target=_watchdog, args=(app, deadline, os.getppid()), daemon=True).start()
    print(f"bench: running quixstreams with commit interval {app.config.commit_interval} s", flush=True)
    app.run()
    print("bench: stopped", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
