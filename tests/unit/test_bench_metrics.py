"""The counter benchmark's two /metrics scrapes (benchmarks/_metrics.py): the endpoints read from the
processor's log, samples summed over labels and workers, and the deltas it prints."""

from __future__ import annotations

from benchmarks import _metrics

START = """\
# TYPE processor_records_in_total counter
processor_records_in_total{topic="in-a"} 100.0
processor_records_in_total{topic="in-b"} 20.0
# TYPE processor_invocations_completed_total counter
processor_invocations_completed_total{handler="counter/add"} 90.0
# TYPE processor_commits_total counter
processor_commits_total 10.0
# TYPE processor_commit_cycle_records histogram
processor_commit_cycle_records_bucket{le="+Inf"} 10.0
processor_commit_cycle_records_count 10.0
processor_commit_cycle_records_sum 400.0
# TYPE processor_step_ack_seconds histogram
processor_step_ack_seconds_bucket{le="+Inf"} 8.0
processor_step_ack_seconds_count 8.0
processor_step_ack_seconds_sum 0.2
# TYPE processor_consumer_lag_records gauge
processor_consumer_lag_records{partition="0",topic="in-a"} 700.0
processor_consumer_lag_records{partition="1",topic="in-a"} 300.0
"""


def _end(records_in: int, completed: int, commits: int, cycle_records: int, acks: int, lag: int) -> str:
    return f"""\
# TYPE processor_records_in_total counter
processor_records_in_total{{topic="in-a"}} {records_in}
# TYPE processor_invocations_completed_total counter
processor_invocations_completed_total{{handler="counter/add"}} {completed}
# TYPE processor_commits_total counter
processor_commits_total {commits}
# TYPE processor_commit_cycle_records histogram
processor_commit_cycle_records_count {commits}
processor_commit_cycle_records_sum {cycle_records}
# TYPE processor_step_ack_seconds histogram
processor_step_ack_seconds_count {acks}
processor_step_ack_seconds_sum 1.5
# TYPE processor_consumer_lag_records gauge
processor_consumer_lag_records{{partition="0",topic="in-a"}} {lag}
"""


def test_the_admin_endpoints_are_read_from_the_log_once_each_in_order() -> None:
    log = ("2026-11-29 23:00:00,001 INFO processor.admin: admin endpoint listening on http://127.0.0.1:40001 "
           "(loopback)\n... admin endpoint listening on http://127.0.0.1:40002 (loopback)\n"
           "... admin endpoint listening on http://127.0.0.1:40001 (loopback)\n")
    assert _metrics.admin_urls(log) == ["http://127.0.0.1:40001", "http://127.0.0.1:40002"]
    assert _metrics.admin_urls("no endpoint here") == []


def test_samples_are_summed_over_labels_and_workers() -> None:
    s = _metrics.parse([START, START])
    assert s["processor_records_in_total"] == 240
    assert s["processor_consumer_lag_records"] == 2000
    assert s["processor_commit_cycle_records_sum"] == 800


def test_the_deltas_say_how_far_each_figure_moved_between_the_scrapes() -> None:
    rows = _metrics.deltas(_metrics.parse([START]), _metrics.parse([_end(10_120, 10_090, 60, 20_400, 10_008, 0)]))
    assert [(d.label, d.change) for d in rows] == [
        ("records in", 10_000), ("invocations completed", 10_000), ("commits", 50),
        ("commit-cycle records", 20_000), ("step acks (latency count)", 10_000),
        ("consumer lag (records, gauge)", -1000)]
    text = _metrics.table(rows, seconds=2.0)
    lines = text.splitlines()
    assert lines[0].split() == ["figure", "start", "end", "change", "per", "s"]
    assert lines[1].split() == ["records", "in", "120", "10,120", "+10,000", "5,000"]
    assert lines[6].split()[-4:] == ["1,000", "0", "-1,000", "-500"]
    line = _metrics.summary(rows, seconds=2.0)
    assert line.startswith("/metrics scraped at the start and the end of the window (2.0 s apart): ")
    assert "records in +10,000" in line and "commits +50" in line and "consumer lag 1,000 → 0" in line


def test_a_figure_one_scrape_lacks_shows_no_change() -> None:
    rows = _metrics.deltas({"processor_commits_total": 3.0}, {})
    assert all(d.change is None for d in rows)
    assert "-" in _metrics.table(rows, seconds=1.0).splitlines()[3]
    assert _metrics.summary(rows, 1.0).endswith("apart): ")
