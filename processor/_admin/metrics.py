"""The engine's figures as Prometheus metrics, built at scrape time.

The engine keeps plain counters (``processor/_engine/stats.py``, ``Engine.records_in``, the commit
timings' buckets, ...); nothing on the hot path calls prometheus-client. A scrape copies them on the
event loop (``api.metrics_snapshot``) and this collector turns the copy into metric families. One
``CollectorRegistry`` per engine, so several engines in one process (tests) do not share metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

Snapshot = Callable[[], dict[str, Any]]


def _counter(name: str, doc: str, label: str, values: Mapping[str, int]) -> CounterMetricFamily:
    m = CounterMetricFamily(name, doc, labels=[label])
    for k, v in sorted(values.items()):
        m.add_metric([k], v)
    return m


def _counter_by(name: str, doc: str, labels: list[str], values: Mapping[tuple[str, ...], int]) -> CounterMetricFamily:
    m = CounterMetricFamily(name, doc, labels=labels)
    for k, v in sorted(values.items()):
        m.add_metric(list(k), v)
    return m


def _histogram(name: str, doc: str, snap: tuple[list[tuple[str, int]], float],
               labels: dict[str, str] | None = None) -> HistogramMetricFamily:
    m = HistogramMetricFamily(name, doc, labels=list(labels or {}))
    buckets, total = snap
    m.add_metric(list((labels or {}).values()), buckets=buckets, sum_value=total)
    return m


class EngineCollector:
    """A prometheus-client collector (``collect`` at scrape time) over an engine's snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not take a snapshot (the engine may not run yet)

    def collect(self) -> Iterable[Metric]:
        s = self._snapshot()
        yield _counter("processor_records_in", "Records consumed and routed to a partition worker, per topic",
                       "topic", s["records_in"])
        by = "handler"
        yield _counter("processor_invocations_started", "Invocations created (input records, calls, sends, "
                       "Client invokes), per handler", by, s["created"])
        yield _counter("processor_invocations_completed", "Invocations that returned, per handler", by,
                       s["completed"])
        yield _counter("processor_invocations_failed", "Invocations that failed for good (TerminalError, "
                       "retries exhausted, cancelled, killed, refused), per handler", by, s["failed"])
        yield _counter_by("processor_invocations_paused", "Invocations paused, per handler and reason "
                          "(nondeterminism: a journal divergence; retries_exhausted)", [by, "reason"], s["paused"])
        yield _counter_by("processor_invocations_dead_lettered", "Invocations whose input went to the DLQ and "
                          "that failed, per handler and reason (retries_exhausted)", [by, "reason"],
                          s["dead_lettered"])
        yield _counter("processor_invocation_retries", "Invocation attempts that raised and back off to retry, "
                       "per handler", by, s["backing_off"])
        yield CounterMetricFamily("processor_invocations_suspended", "Invocations that left memory to wait "
                                  "durably (suspended)", value=s["suspended_total"])
        yield GaugeMetricFamily("processor_invocations_in_memory", "Invocations with a runtime in memory",
                                value=s["in_memory"])
        yield GaugeMetricFamily("processor_invocations_out_of_memory", "In-flight invocations waiting in the store, "
                                "not in memory: suspended on a timer, call, awakeable or promise, or backing off or "
                                "paused and evicted (as of the last commit; recounted every 10 s)",
                                value=s["stored"]["out_of_memory"])
        yield GaugeMetricFamily("processor_invocations_queued", "Invocations waiting behind another of their "
                                "key (exclusive) or for a handler's limit", value=s["queued"])
        yield _histogram("processor_step_attempts", "Attempts a step took to its final outcome",
                         s["step_attempts"])
        bodies = HistogramMetricFamily("processor_step_seconds", "Duration of each attempt of a step body "
                                       "(ctx.run), per handler and step name", labels=["handler", "step"])
        for (target, name), (buckets, total) in s["step_seconds"].items():
            bodies.add_metric([target, name], buckets=buckets, sum_value=total)
        yield bodies
        yield CounterMetricFamily("processor_steps_failed", "Steps that failed for good (TerminalError or retries "
                                  "exhausted)", value=s["steps_failed"])
        if s["step_ack"] is not None:
            yield _histogram("processor_step_ack_seconds", "Time from producing a record of step results to "
                             "its acknowledgement by the steps log (when a step becomes durable)", s["step_ack"])
        phases = HistogramMetricFamily("processor_commit_phase_seconds", "Commit cycle time per phase (produce, "
                                       "flush, send_offsets, commit, apply; cycle = the whole)", labels=["phase"])
        for phase, (buckets, total) in s["phases"].items():
            phases.add_metric([phase], buckets=buckets, sum_value=total)
        yield phases
        yield _histogram("processor_commit_cycle_records", "Records (changelog writes and outputs) per commit "
                         "cycle's transaction", s["cycle_records"])
        yield CounterMetricFamily("processor_commits", "Commit cycles committed", value=s["commits"])
        yield CounterMetricFamily("processor_rebuilds", "Rebuilds from the last commit (after a failed or stuck "
                                  "transaction, a fence or a freeze)", value=s["rebuilds"])
        yield _counter("processor_transactions_failed", "Transactions that failed, by outcome (abortable, "
                       "not_owner = fenced by the group generation, producer_lost, stuck)", "outcome",
                       s["txn_failures"])
        yield _counter("processor_fences", "Fences of this instance's own ids (producer epoch, static member)",
                       "kind", s["fences"])
        yield _counter("processor_rebalances", "Rebalance callbacks, by event (assigned, revoked, lost)", "event",
                       s["rebalances"])
        yield _counter("processor_dead_letters", "Records sent to the DLQ, by reason (processor.error.class)",
                       "reason", s["dead_letters"])
        yield _counter("processor_forwarded_records", "Bound records forwarded to the partition owning their key, "
                       "per topic (this process)", "topic", s["forwarded"])
        yield CounterMetricFamily("processor_records_redelivered", "Records the consumer delivered again, dropped "
                                  "(since the partitions were last assigned)", value=s["redelivered"])
        yield GaugeMetricFamily("processor_timers_pending", "Durable timers due within the in-memory window (the "
                                "next 60 s)", value=s["timers_in_window"])
        yield GaugeMetricFamily("processor_timers_stored", "Durable timers in the owned partitions' stores, due any "
                                "time (as of the last commit; recounted every 10 s)", value=s["stored"]["timers"])
        yield GaugeMetricFamily("processor_partitions_owned", "Partitions assigned to this instance",
                                value=s["owned"])
        yield GaugeMetricFamily("processor_partitions_active", "Partitions restored and processing",
                                value=s["active"])
        yield GaugeMetricFamily("processor_ready", "1 when the assignment is restored and active",
                                value=int(s["ready"]))
        left = GaugeMetricFamily("processor_restore_records_left", "Changelog records a restoring partition has "
                                 "still to read (estimate)", labels=["partition"])
        rate = GaugeMetricFamily("processor_restore_records_per_second", "A restoring partition's restore rate",
                                 labels=["partition"])
        for p, (_done, n_left, r) in sorted(s["restores"].items()):
            left.add_metric([str(p)], n_left)
            rate.add_metric([str(p)], r)
        yield left
        yield rate
        lag = GaugeMetricFamily("processor_consumer_lag_records", "Records between the group's committed offset "
                                "and the latest stable offset (consumer statistics, every 5 s)",
                                labels=["topic", "partition"])
        for (t, p), n in sorted(s["lag"].items()):
            lag.add_metric([t, str(p)], n)
        yield lag


def registry(snapshot: Snapshot) -> CollectorRegistry:
    """A registry of its own for one engine: its collector and the process's CPU and memory."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(EngineCollector(snapshot))
    ProcessCollector(registry=reg)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The Prometheus text format (version 0.0.4)."""
    return generate_latest(reg)
