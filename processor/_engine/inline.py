"""Which synchronous step bodies run inline on the event loop instead of on a step thread.

A thread hop costs two context switches and a trip through the loop per step — more than a trivial
body itself. A body that proved quick runs inline: after ``PROVE`` runs on a thread each under
``QUICK_S``, a step (by handler and step name) runs on the loop; one inline run over ``SLOW_S``
sends it back to threads for good (in this process). A body that is quick most of the time and
sometimes blocks long stalls the loop when it does (the first such run bans it): make a body that
waits on I/O ``async``.
"""

from __future__ import annotations

from dataclasses import dataclass

PROVE = 20
QUICK_S = 0.0005
SLOW_S = 0.002


@dataclass(slots=True)
class _Record:
    quick_runs: int = 0
    banned: bool = False


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
            if seconds > SLOW_S:
                r.banned = True
        elif seconds < QUICK_S:
            r.quick_runs += 1
        else:
            r.quick_runs = 0


STEPS = InlineSteps()
