"""The engine's ``/metrics`` during a benchmark (the processor started with ``--admin-port 0``): one
scrape near the start of the measured window and one at its end, never in between (a scrape runs on
the engine's event loop), and the deltas of the figures that should move while events flow.
(A private module: the harness does not import it as a benchmark.)"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

LISTENING = re.compile(r"admin endpoint listening on (http://\S+)")

# (label, sample name): each figure sums the samples of that name over their labels (topics,
# handlers, partitions) and over the engine's workers
FIGURES: tuple[tuple[str, str], ...] = (
    ("records in", "processor_records_in_total"),
    ("invocations completed", "processor_invocations_completed_total"),
    ("commits", "processor_commits_total"),
    ("commit-cycle records", "processor_commit_cycle_records_sum"),
    ("step acks (latency count)", "processor_step_ack_seconds_count"),
    ("consumer lag (records, gauge)", "processor_consumer_lag_records"),
)

Samples = dict[str, float]  # sample name -> its value summed over labels (and workers)


@dataclass(frozen=True, slots=True, kw_only=True)
class Delta:
    label: str
    start: float | None  # None: not exposed by that scrape
    end: float | None

    @property
    def change(self) -> float | None:
        return None if self.start is None or self.end is None else self.end - self.start


def admin_urls(log: str) -> list[str]:
    """The admin endpoints a processor's log says it listens on (one per worker), in order."""
    return list(dict.fromkeys(LISTENING.findall(log)))


def parse(texts: Iterable[str]) -> Samples:
    """Prometheus text expositions (one per worker) summed per sample name."""
    out: Samples = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def scrape(urls: Sequence[str], timeout: float = 10.0) -> Samples:
    """GET ``/metrics`` of every endpoint in `urls`, summed."""
    texts = []
    for url in urls:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout) as r:
            texts.append(r.read().decode())
    return parse(texts)


def deltas(start: Samples, end: Samples) -> list[Delta]:
    """Each figure at the first scrape, at the second, and (``change``) how far it moved."""
    return [Delta(label=label, start=start.get(name), end=end.get(name)) for label, name in FIGURES]


def _n(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+,.0f}" if sign else f"{v:,.0f}"


def table(rows: Sequence[Delta], seconds: float) -> str:
    """A small text table: figure, start, end, change, per second over the `seconds` between scrapes."""
    head = ("figure", "start", "end", "change", "per s")
    body = [(d.label, _n(d.start), _n(d.end), _n(d.change, sign=True),
             "-" if d.change is None or seconds <= 0 else f"{d.change / seconds:,.0f}") for d in rows]
    widths = [max(len(r[i]) for r in (head, *body)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in (head, *body)]
    return "\n".join(lines)


def summary(rows: Sequence[Delta], seconds: float) -> str:
    """One line for a row's notes: each figure's change between the two scrapes."""
    parts = [f"consumer lag {_n(d.start)} → {_n(d.end)}" if d.label.startswith("consumer lag")
             else f"{d.label} {_n(d.change, sign=True)}" for d in rows if d.change is not None]
    return f"/metrics scraped at the start and the end of the window ({seconds:.1f} s apart): " + ", ".join(parts)
