"""The comparison table printed at the end of a run: issue 8's systems side by side, its targets, met or not.

Built only from the rows of this run (`counter_peers`, `ten_steps`, `restate_steps`, `restore`,
`sleeping_memory`); a row that failed, was skipped or is missing says so in its cell. Also the value and
ratio formatting every table of `benchmarks.run` uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from benchmarks.harness import Row

# ---------------------------------------------------------------------------------------------- cells


def fmt(v: float) -> str:
    if math.isnan(v):
        return "—"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}" if a >= 10 else f"{v:.2f}"


def fmt_value(r: Row) -> str:
    """A row's value cell: FAILED / SKIPPED for rows without a value, a quoted figure marked as such."""
    if r.status in ("failed", "skipped"):
        return r.status.upper()
    return fmt(r.value) + (" (quoted)" if r.status == "quoted" else "")


def ratio_text(x: float) -> str:
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.2g}"  # two significant digits for small ratios


def render_text(head: list[str], cells: list[list[str]], right: set[int]) -> str:
    """Aligned columns; the last column is left ragged."""
    widths = [max(len(r[i]) for r in [head, *cells]) for i in range(len(head) - 1)]

    def line(r: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))]
        return "  ".join([*parts, r[-1]]).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths] + ["-----"]), *map(line, cells)])


def render_markdown(head: list[str], cells: list[list[str]], right: set[int]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in cells]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- lookups


class _Rows:
    """This run's rows by "bench/metric", and which benchmarks failed as a whole."""

    def __init__(self, rows: list[Row], failures: Mapping[str, str]) -> None:
        self.by_key = {r.key: r for r in rows}
        self.failures = failures

    def get(self, key: str) -> Row | None:
        return self.by_key.get(key)

    def value(self, key: str) -> float | None:
        r = self.by_key.get(key)
        return r.value if r is not None and r.status in ("ok", "quoted") and not math.isnan(r.value) else None

    def cell(self, key: str, unit: str = "") -> str:
        """The value as a cell, or why there is none."""
        r = self.by_key.get(key)
        if r is None:
            bench = key.split("/", 1)[0]
            return "FAILED" if bench in self.failures else "not run"
        return fmt_value(r) + (f" {unit}" if unit and r.status not in ("failed", "skipped") else "")


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "no")


# ---------------------------------------------------------------------------------------------- counter


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterLine:
    tag: str  # counter_peers/<metric>@<tag>
    label: str
    target: str
    met: Callable[[_Rows], str] | None = None  # None: no target (a peer or the ceiling)


P = "counter_peers/"
QUIX_EPS, QUIX_CPU = f"{P}events_per_s@quix_100ms", f"{P}cpu_ms_per_1k_events@quix_100ms"


def _ratio_met(key: str, base: str, need: float, cpu_key: str | None = None) -> Callable[[_Rows], str]:
    """'yes'/'no' for value(key) >= need × value(base) (and, with cpu_key, its CPU <= Quix's), the
    ratio shown; 'FAILED'/'skipped'/'n/a' when a value is missing."""
    def met(rows: _Rows) -> str:
        r = rows.get(key)
        if r is None or r.status in ("failed", "skipped"):
            return rows.cell(key)
        v, b = rows.value(key), rows.value(base)
        if v is None or not b:
            return "n/a"
        ok = v / b >= need
        shown = f"{ratio_text(v / b)}×"
        if cpu_key is not None:
            cpu, quix_cpu = rows.value(cpu_key), rows.value(QUIX_CPU)
            if cpu is None or quix_cpu is None:
                return f"n/a (CPU not measured; {shown})"
            ok = ok and cpu <= quix_cpu
            shown += f", CPU {ratio_text(cpu / quix_cpu)}×"
        return f"{_met(ok)} ({shown})"
    return met


COUNTER_LINES = (
    CounterLine(tag="raw_b2b", label="raw transactional copy, back to back (the ceiling)", target="—"),
    CounterLine(tag="quix_100ms", label="Quix Streams exactly-once, commit every 0.1 s", target="(the reference)"),
    CounterLine(tag="quix_default", label="Quix Streams exactly-once, default commit interval", target="—"),
    CounterLine(tag="ours_step", label="ours, one ctx.run (get, run, set, emit)",
                target="≥ 1.0× Quix@0.1s events/s",
                met=_ratio_met(f"{P}events_per_s@ours_step", QUIX_EPS, 1.0)),
    CounterLine(tag="ours_nostep", label="ours, no step (get, set, emit)",
                target="≥ 1.5× Quix@0.1s events/s, CPU/event ≤ Quix@0.1s",
                met=_ratio_met(f"{P}events_per_s@ours_nostep", QUIX_EPS, 1.5,
                               cpu_key=f"{P}cpu_ms_per_1k_events@ours_nostep")),
    CounterLine(tag="ours_step_w2", label="ours, one ctx.run, --workers 2",
                target="≥ 1.6× ours with --workers 1",
                met=_ratio_met(f"{P}events_per_s@ours_step_w2", f"{P}events_per_s@ours_step", 1.6)),
)
COUNTER_HEAD = ["system", "events/s", "× Quix@0.1s", "CPU ms/1k events", "records/event", "target", "met?"]


def counter_cells(rows: _Rows) -> list[list[str]]:
    quix = rows.value(QUIX_EPS)
    out = []
    for line in COUNTER_LINES:
        eps_key = f"{P}events_per_s@{line.tag}"
        eps = rows.value(eps_key)
        ratio = ratio_text(eps / quix) if eps is not None and quix else ""
        out.append([line.label, rows.cell(eps_key), ratio, rows.cell(f"{P}cpu_ms_per_1k_events@{line.tag}"),
                    rows.cell(f"{P}records_per_event@{line.tag}"), line.target,
                    line.met(rows) if line.met else "—"])
    return out


# ---------------------------------------------------------------------------------------------- the rest


OTHER_HEAD = ["what", "ours", "peer", "target", "met?"]
TEN, RESTATE = "ten_steps/", "restate_steps/"


def _restate(rows: _Rows, *metrics: str, unit: str) -> str:
    got = [rows.get(f"{RESTATE}{m}") for m in metrics]
    if any(r is None for r in got):
        return "Restate: " + rows.cell(f"{RESTATE}{metrics[0]}")
    vals = " / ".join(rows.cell(f"{RESTATE}{m}") for m in metrics).replace(" (quoted)", "")
    how = "quoted, not measured in this run" if any(r and r.status == "quoted" for r in got) else "measured in this run"
    return f"Restate 1.7.12 + Python SDK: {vals} {unit} ({how})"


def _at_most(rows: _Rows, key: str, bound: float) -> str:
    r = rows.get(key)
    if r is None or r.status in ("failed", "skipped"):
        return rows.cell(key)
    v = rows.value(key)
    return "n/a" if v is None else _met(v <= bound)


def _at_least(rows: _Rows, key: str, bound: float) -> str:
    r = rows.get(key)
    if r is None or r.status in ("failed", "skipped"):
        return rows.cell(key)
    v = rows.value(key)
    return "n/a" if v is None else _met(v >= bound)


def other_cells(rows: _Rows) -> list[list[str]]:
    p50, p99 = f"{TEN}latency_p50_ms@1", f"{TEN}latency_p99_ms@1"
    lat_met = [_at_most(rows, p50, 15.0), _at_most(rows, p99, 30.0)]
    lat = "yes" if lat_met == ["yes", "yes"] else next((m for m in lat_met if m != "yes"), "no")
    if "yes" in lat_met and lat != "yes":
        lat = f"{lat} ({'p50' if lat_met[0] == 'yes' else 'p99'} yes)"
    sleep = rows.get("sleeping_memory/rss_growth_mb")
    sleepers = "100,000 sleeping invocations"
    if sleep is not None and "10,000 invocations" in sleep.notes and "100,000" not in sleep.notes:
        sleepers = "10,000 sleeping invocations (--quick; the target is for 100,000)"
    ours_lat = f"{rows.cell(p50)} / {rows.cell(p99)} ms" if rows.value(p50) and rows.value(p99) else rows.cell(p50)
    return [
        ["10-step handler, one invocation at a time: p50 / p99", ours_lat,
         _restate(rows, "latency_p50_ms@1", "latency_p99_ms@1", unit="ms"),
         "p50 ≤ 15 ms, p99 ≤ 30 ms", lat],
        ["10-step handler, 64 concurrent keys", rows.cell(f"{TEN}steps_per_s@64", "steps/s"),
         _restate(rows, "steps_per_s@64", unit="steps/s"), "≥ 9,000 steps/s",
         _at_least(rows, f"{TEN}steps_per_s@64", 9000.0)],
        ["restore a partition's store from its changelog", rows.cell("restore/records_per_s", "records/s"), "—",
         "≥ 200,000 records/s", _at_least(rows, "restore/records_per_s", 200_000.0)],
        [f"{sleepers}: RSS growth", rows.cell("sleeping_memory/rss_growth_mb", "MB"), "—", "≤ 100 MB",
         _at_most(rows, "sleeping_memory/rss_growth_mb", 100.0)],
    ]


# ---------------------------------------------------------------------------------------------- output

BENCHES = ("counter_peers", "ten_steps", "restate_steps", "restore", "sleeping_memory")


def comparison(rows: list[Row], failures: Mapping[str, str], *, quick: bool,
               markdown: bool = False) -> str | None:
    """The comparison tables as text (or Markdown), or None if none of their benchmarks ran."""
    if not any(r.bench in BENCHES for r in rows) and not any(b in failures for b in BENCHES):
        return None
    got = _Rows(rows, failures)
    render = render_markdown if markdown else render_text
    parts = [
        "Per-key counter, issue 8's input (counter_peers: each value the median of two interleaved rounds; "
        "ratios and targets against Quix Streams at commit interval 0.1 s):",
        "",
        render(COUNTER_HEAD, counter_cells(got), {1, 2, 3, 4}),
        "",
        render(OTHER_HEAD, other_cells(got), set()),
    ]
    if quick:
        parts += ["", "--quick sizes: the numbers are rough and 'met?' is indicative only."]
    return "\n".join(parts)
