"""Test app: one service handler whose behaviour is picked by the event's "case", for step retries,
step and handler TerminalErrors, and handler exceptions that are retried. Step bodies append their
attempts (number and wall time) to `<RETRIES_DIR>/<case>.steps`; handler bodies append a line to
`<case>.entries` each time the handler function runs, outside any step."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import processor as p

KEEP_JOURNALS = timedelta(days=1)  # the tests read finished invocations' rows and journals
app = p.App(os.environ["RETRIES_APP"], journal_retention=KEEP_JOURNALS,
            invocation_retry=p.RetryPolicy(initial_interval=timedelta(milliseconds=100),
                                           max_interval=timedelta(seconds=1)))
svc = app.service("retries")
OUTPUT = os.environ["RETRIES_OUTPUT"]
DIR = Path(os.environ["RETRIES_DIR"])
STEP_ATTEMPTS = 4  # the flaky step fails 3 times, then succeeds on its 4th and last allowed attempt


def _policy(max_attempts: int) -> p.RetryPolicy:
    return p.RetryPolicy(initial_interval=timedelta(milliseconds=100), multiplier=2,
                         max_attempts=max_attempts)


def _append(path: Path, line: str) -> int:
    with path.open("a") as f:
        f.write(line + "\n")
    return len(path.read_text().splitlines())


def _attempt(case: str) -> int:
    step = p.current_step()
    _append(DIR / f"{case}.steps", f"{step.attempt} {time.time():.6f} {step.idempotency_key}")
    return step.attempt


def flaky(case: str) -> str:
    attempt = _attempt(case)
    if attempt < STEP_ATTEMPTS:
        raise ConnectionError(f"attempt {attempt} failed")
    return f"ok on attempt {attempt}"


def fails_twice(case: str) -> str:
    attempt = _attempt(case)
    if attempt < 3:
        raise ConnectionError(f"attempt {attempt} failed")
    return f"ok on attempt {attempt}"


def always_fails(case: str) -> str:
    raise ConnectionError(f"attempt {_attempt(case)} failed")


def rejects(case: str) -> str:
    _attempt(case)
    raise p.TerminalError("card declined", error_type="CardDeclined")


@svc.handler()
async def run_case(ctx: p.Context, event: dict[str, str]) -> str | None:
    case = event["case"]
    entries = _append(DIR / f"{case}.entries", "entered")
    if case == "flaky_step":
        result = await ctx.run("flaky", flaky, case, retry=_policy(STEP_ATTEMPTS))
        ctx.emit(OUTPUT, {"case": case, "result": result})
    elif case == "durable_backoff":  # a test SIGKILLs the processor during the 1 s backoff
        slow = p.RetryPolicy(initial_interval=timedelta(seconds=1), multiplier=2, max_attempts=3)
        result = await ctx.run("slow", fails_twice, case, retry=slow)
        ctx.emit(OUTPUT, {"case": case, "result": result})
    elif case == "failing_step":
        try:
            await ctx.run("failing", always_fails, case, retry=_policy(3))
        except p.StepFailedError as e:
            ctx.emit(OUTPUT, {"case": case, "error": type(e).__name__, "message": str(e)})
    elif case == "terminal_step":
        try:
            await ctx.run("charge", rejects, case, retry=_policy(5))
        except p.TerminalError as e:
            ctx.emit(OUTPUT, {"case": case, "error": type(e).__name__, "message": e.message,
                              "error_type": e.error_type})
    elif case == "terminal_handler":
        ctx.emit(OUTPUT, {"case": case, "entered": entries})
        raise p.TerminalError("order rejected: out of stock")
    elif case == "flaky_handler":
        ctx.emit(OUTPUT, {"case": case, "before_failure": True})
        if entries <= 2:
            raise ValueError(f"handler attempt {entries} failed")
        ctx.emit(OUTPUT, {"case": case, "done_on_attempt": entries})
    return case


app.subscribe(os.environ["RETRIES_INPUT"], run_case)
