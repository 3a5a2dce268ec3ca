"""Which synchronous step bodies run inline on the event loop instead of on a step thread.

A thread hop costs two context switches and a trip through the loop per step — more than a trivial
body itself. A body that proved quick runs inline: after ``PROVE`` runs on a thread each under
``QUICK_S``, a step (by handler and step name) runs on the loop; ``STRIKES`` inline runs over
``SLOW_S`` within ``WINDOW`` inline runs send it back to threads for good (in this process). One
slow run is not enough: a quick body's run can measure long when another thread takes the GIL
from the loop in the middle of it (seen under load: the counter's step was banned by such a run).
A body that is quick most of the time and sometimes blocks long stalls the loop when it does (up
to ``STRIKES`` times): make a body that waits on I/O ``async``.
"""

from __future__ import annotations

from dataclasses import dataclass

PROVE = 20
QUICK_S = 0.0005
SLOW_S = 0.002
STRIKES = 3
WINDOW = 1000


@dataclass(slots=True)
class _Record:
    quick_runs: int = 0
    banned: bool = False
    inline_runs: int = 0  # in the current window
    slow_runs: int = 0    # inline runs over SLOW_S in the current window


class InlineSteps:
    """Per-step evidence, shared by a process's partitions (``STEPS``)."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, str], _Record] = {}

    def inline(self, step: tuple[str, str]) -> bool:
        r = self._steps.get(step)
        return r is not None and not r.banned and r.quick_runs >= PROVE

    def ran(self, step: tuple[str, str], seconds: float, *, inline: bool) -> None:
        r = self._steps.get(step)
        if r is None:
            r = self._steps[step] = _Record()
        if inline:
            r.inline_runs += 1
            if r.inline_runs > WINDOW:
                r.inline_runs, r.slow_runs = 1, 0
            if seconds > SLOW_S:
                r.slow_runs += 1
                r.banned = r.slow_runs >= STRIKES
        elif seconds < QUICK_S:
            r.quick_runs += 1
        else:
            r.quick_runs = 0


STEPS = InlineSteps()
