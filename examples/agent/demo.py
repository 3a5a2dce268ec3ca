"""Drive the agent example end to end against a real broker, with a crash in the middle.

    python -m examples.agent.demo --bootstrap-servers 127.0.0.1:19092 [--no-crash]

Starts a processor of ``examples.agent.app:app`` as a subprocess, submits one support task with
``p.Client.submit_workflow``, polls the shared ``status`` handler until the agent waits for a human
approval of its refund (a 24 h durable timer raced against an awakeable), then SIGKILLs the processor
and starts a new one on the same state dir. It approves the refund with ``Client.resolve_awakeable``,
waits for the workflow's output, and checks with the ledger the step bodies write that every model
call and tool call ran exactly once across the crash. Prints the transcript and the journal, stops
the processor with SIGTERM, and exits non-zero if anything is off. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import processor as p
from examples._support import (
    REPO,
    DemoError,
    Processor,
    check_reachable,
    end_offsets,
    invocations,
    journal,
    ledger,
    on_sigterm_exit,
    rel,
    running,
    say,
    wait_for,
)

APP_SPEC = "examples.agent.app:app"
PROMPT = "Customer ada says the mug in order o-1017 arrived broken. Sort it out."
EXPECTED = Counter({"model": 4, "tool:lookup_order": 1, "tool:issue_refund": 1, "tool:send_email": 1})


def app_name() -> str:
    return f"{os.environ.get('AGENT_PREFIX', '')}agent"


def ran(ledger_path: Path, inv: str) -> Counter[str]:
    return Counter(line[1] for line in ledger(ledger_path, inv + " "))


def show_ran(ledger_path: Path, inv: str) -> None:
    lines = ledger(ledger_path, inv + " ")
    say(f"  ledger: {len(lines)} step bodies ran: " + ", ".join(f"{ln[1]}{ln[2]}" for ln in lines))


async def wait_status(client: p.Client, task: str, want: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st: dict[str, Any] = await client.call("agent/status", None, key=task, timeout=timedelta(seconds=timeout))
        if want in str(st["stage"]):
            return st
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for stage {want!r}; last status {st}")
        await asyncio.sleep(0.3)


async def drive(args: argparse.Namespace, proc: Processor, task: str, ledger_path: Path) -> list[str]:
    problems: list[str] = []
    name = app_name()
    async with p.Client(args.bootstrap_servers, name) as client:
        say(f"\n== 2. submit the task (workflow agent, key {task})")
        say(f"  prompt: {PROMPT}")
        inv = await client.submit_workflow("agent", task, {"prompt": PROMPT})
        say(f"  invocation {inv}")

        say("\n== 3. poll agent/status until the agent asks for an approval")
        st = await wait_status(client, task, "awaiting approval", args.timeout)
        pending = st["pending_approval"]
        say(f"  stage: {st['stage']}")
        say(f"  pending: {pending['tool']}({pending['args']}) awakeable {pending['awakeable']}")
        show_ran(ledger_path, inv)
        before = ran(ledger_path, inv)
        if before != Counter({"model": 2, "tool:lookup_order": 1}):
            problems.append(f"before the approval the ledger shows {dict(before)}, expected 2 model calls and "
                            "1 lookup_order")
        await asyncio.sleep(1.5)  # > suspend_after (1 s)
        row = next((r for r in invocations(proc.state_dir, name) if r["id"] == inv), {})
        say(f"  invocation row: {row.get('status')} (suspended = evicted from memory; running = still within "
            "its suspend_after window)")

        if args.crash:
            say("\n== 4. crash: SIGKILL the processor while the agent waits, and start a new one")
            proc.crash()
            say(f"  killed pid; exit status {proc.proc.returncode if proc.proc else '?'}")
            proc.start()
            proc.wait_ready(args.timeout)
            resumed = [ln for ln in proc.log().splitlines() if "resumed" in ln]
            say("  " + (resumed[0].split(": ", 1)[-1] if resumed else "(no 'resumed' line in the log)"))
            st = await wait_status(client, task, "awaiting approval", args.timeout)
            say(f"  stage after the restart: {st['stage']}; same awakeable: "
                f"{st['pending_approval']['awakeable'] == pending['awakeable']}")
            show_ran(ledger_path, inv)
            if ran(ledger_path, inv) != before:
                problems.append(f"after the crash the ledger shows {dict(ran(ledger_path, inv))}, "
                                f"expected {dict(before)}: a step ran again")
            if st["pending_approval"]["awakeable"] != pending["awakeable"]:
                problems.append("the awakeable id changed across the crash")
        else:
            say("\n== 4. (--no-crash: no crash)")

        say(f"\n== 5. a human approves: Client.resolve_awakeable({pending['awakeable']}, 'ops@acme')")
        await client.resolve_awakeable(pending["awakeable"], "ops@acme")
        out = await client.workflow_output("agent", task, timeout=timedelta(seconds=args.timeout))
        say(f"  output: {out['answer']!r} after {out['turns']} turns")

        say("\n== 6. the transcript (the workflow's output)")
        for m in out["history"]:
            if m["role"] == "user":
                say(f"  user:   {m['content']}")
            elif m["role"] == "tool":
                say(f"  tool:   {m['tool']} -> {m['content']}")
            elif m["type"] == "final":
                say(f"  model:  final answer: {m['content']}")
            else:
                say(f"  model:  {m['thought']} -> {m['tool']}({m['args']})")

        say("\n== 7. what ran (ledger) and the journal (processor journal, read-only)")
        show_ran(ledger_path, inv)
        total = ran(ledger_path, inv)
        if total != EXPECTED:
            problems.append(f"the ledger shows {dict(total)}, expected each model/tool call once: {dict(EXPECTED)}")
        if "refunded" not in str(out["answer"]) or "not refunded" in str(out["answer"]):
            problems.append(f"unexpected answer {out['answer']!r}")
        refund = next((m["content"] for m in out["history"] if m.get("tool") == "issue_refund"
                       and m["role"] == "tool"), {})
        if refund.get("approved_by") != "ops@acme":
            problems.append(f"the refund result does not carry the approver: {refund}")
        say("\n".join("  " + ln for ln in journal(proc.state_dir, name, inv).splitlines()))
        say("  (the `sleep` entry is the 24 h timeout: it lost the `select` to the approval and stays pending until\n"
            "   its timer fires; `processor journal` labels pending entries `retrying`)")
    return problems


def run_demo(args: argparse.Namespace) -> int:
    bootstrap = args.bootstrap_servers
    task = "t" + time.strftime("%H%M%S") + uuid.uuid4().hex[:4] + "-ticket"
    state_dir = Path(args.state_dir).resolve()
    ledger_path = state_dir / "ledger.txt"
    check_reachable(bootstrap)

    say(f"== 1. start the processor (broker {bootstrap})")
    proc = Processor(APP_SPEC, bootstrap, state_dir, env={"AGENT_LEDGER": str(ledger_path)})
    with running(proc, args.timeout):
        wait_for(f"{app_name()}.results", lambda: bool(end_offsets(bootstrap, f"{app_name()}.results")), 30)
        problems = asyncio.run(drive(args, proc, task, ledger_path))
        if log_errors := proc.problems():
            n = sum(" ERROR " in ln for ln in log_errors)
            say(f"\nnote: the processor logged {n} ERROR(s) (not failing the demo for them; the results are "
                "checked above):")
            say("\n".join(f"  {ln}" for ln in log_errors))
        say("\n== 8. stop the processor (SIGTERM)")
        code = proc.stop(args.timeout)
        say(f"  exited with status {code}")
        if code != 0:
            problems.append(f"the processor exited with status {code}")
    if problems:
        say("\ndemo FAILED:\n  " + "\n  ".join(problems))
        say(f"-- processor log (last 40 lines of {rel(proc.log_path)}):\n{proc.tail()}")
        return 1
    say("\nOK: 4 model calls and 3 tool calls, each run exactly once" + (" across a SIGKILL" if args.crash else "")
        + "; the refund waited for a human approval; clean shutdown")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.agent.demo", description="Run the agent example.")
    parser.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"))
    parser.add_argument("--state-dir", default=str(REPO / ".demo-state" / "agent"))
    parser.add_argument("--no-crash", dest="crash", action="store_false",
                        help="do not kill and restart the processor while the agent waits")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed for each wait")
    args = parser.parse_args(argv)
    on_sigterm_exit()
    try:
        return run_demo(args)
    except DemoError as e:
        say(f"\ndemo FAILED: {e}")
        return 1
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
