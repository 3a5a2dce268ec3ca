"""When a synchronous step body runs inline on the loop (processor/_engine/inline.py)."""

from __future__ import annotations

from processor._engine.inline import PROVE, QUICK_S, SLOW_S, STRIKES, WINDOW, InlineSteps

STEP = ("counter/count", "effect")


def test_a_step_runs_inline_after_proving_quick_on_threads_and_goes_back_for_good_when_slow_again() -> None:
    s = InlineSteps()
    for _ in range(PROVE - 1):
        s.ran(STEP, QUICK_S / 2, inline=False)
    assert not s.inline(STEP)
    s.ran(STEP, QUICK_S / 2, inline=False)
    assert s.inline(STEP) and not s.inline(("counter/count", "other"))
    for _ in range(STRIKES - 1):
        s.ran(STEP, SLOW_S * 2, inline=True)
        assert s.inline(STEP), "one slow run may be the GIL taken away mid-body: not yet"
    s.ran(STEP, SLOW_S * 2, inline=True)
    assert not s.inline(STEP)
    for _ in range(PROVE * 2):
        s.ran(STEP, QUICK_S / 2, inline=False)
    assert not s.inline(STEP), "a step that once stalled the loop stays on threads"


def test_a_slow_thread_run_restarts_the_proof() -> None:
    s = InlineSteps()
    for _ in range(PROVE - 1):
        s.ran(STEP, QUICK_S / 2, inline=False)
    s.ran(STEP, QUICK_S * 4, inline=False)
    s.ran(STEP, QUICK_S / 2, inline=False)
    assert not s.inline(STEP)


def test_slow_inline_runs_far_apart_do_not_ban_a_step() -> None:
    s = InlineSteps()
    for _ in range(PROVE):
        s.ran(STEP, QUICK_S / 2, inline=False)
    for _ in range(STRIKES * 3):
        s.ran(STEP, SLOW_S * 2, inline=True)  # one per window: preemptions, not a blocking body
        for _ in range(WINDOW):
            s.ran(STEP, QUICK_S / 2, inline=True)
    assert s.inline(STEP)
