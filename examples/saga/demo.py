"""Drive the order saga end to end against a real broker.

    python -m examples.saga.demo --bootstrap-servers 127.0.0.1:19092

Starts one processor instance of ``examples.saga.app:app`` as a subprocess, submits four order
workflows with ``p.Client``, reads their approval requests from ``approvals`` (read_committed),
approves one (``Client.resolve_awakeable``), rejects one (``Client.reject_awakeable``), lets one time
out (``--approval-timeout``, 3 s) and cancels one (``Client.cancel``), prints each workflow's output
(``Client.workflow_output``) and which steps and compensations ran (the ledger the step bodies
write), submits the approved order again to show it does not run twice, stops the processor with
SIGTERM, and exits non-zero if anything is off. Every wait has a deadline; on failure the
processor's log tail is printed. Each run uses fresh order ids.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import processor as p
from examples._support import (
    REPO,
    DemoError,
    Processor,
    Reader,
    check_reachable,
    end_offsets,
    ensure_topics,
    invocations,
    ledger,
    on_sigterm_exit,
    rel,
    running,
    say,
    table,
    wait_for,
)

APP_SPEC = "examples.saga.app:app"
PARTITIONS = 4  # the app's App(partitions=4)


def names() -> tuple[str, str]:
    prefix = os.environ.get("SAGA_PREFIX", "")
    return f"{prefix}saga", f"{prefix}approvals"


async def drive(args: argparse.Namespace, proc: Processor, run: str, ledger_path: Path) -> list[str]:
    app_name, approvals_topic = names()
    orders = {
        "approve": {"customer": "ada", "total": 42.5, "address": "12 Analytical St",
                    "items": [{"sku": "book-42", "qty": 1}]},
        "reject": {"customer": "grace", "total": 980.0, "address": "1 Compiler Rd",
                   "items": [{"sku": "desk-1", "qty": 2}]},
        "timeout": {"customer": "linus", "total": 19.9, "address": "5 Kernel Way",
                    "items": [{"sku": "mug-7", "qty": 3}]},
        "cancel": {"customer": "barbara", "total": 64.0, "address": "9 Abstraction Ave",
                   "items": [{"sku": "lamp-12", "qty": 1}]},
    }
    ids = {what: f"{run}-{what}" for what in orders}
    # The timeout order waits --approval-timeout; the other two long enough for the demo to decide.
    long_wait = max(60.0, 10 * args.approval_timeout)
    for what, body in orders.items():
        body["approval_timeout_s"] = args.approval_timeout if what == "timeout" else long_wait
    problems: list[str] = []
    wait = timedelta(seconds=args.timeout)

    approvals = Reader(args.bootstrap_servers, end_offsets(args.bootstrap_servers, approvals_topic), run + "-")
    async with p.Client(args.bootstrap_servers, app_name) as client:
        say(f"\n== 3. submit four order workflows (run {run})")
        t0 = time.monotonic()
        invs: dict[str, str] = {}
        for what, body in orders.items():
            inv = invs[what] = await client.submit_workflow("order", ids[what], body)
            say(f"  order {ids[what]:<22} -> invocation {inv}  (approval timeout {body['approval_timeout_s']:g}s)")

        say(f"\n== 4. read the approval requests from {approvals_topic} (read_committed)")
        await asyncio.to_thread(approvals.poll_until, "four approval requests",
                                lambda recs: len({k for k, _ in recs}) >= len(ids), args.timeout, proc)
        requests = {k: v for k, v in approvals.records}
        for oid in ids.values():
            r = requests[oid]
            say(f"  {oid:<22} total {r['total']:>7.2f}  awakeable {r['awakeable']}")
        for what, oid in ids.items():
            st = await client.call("order/status", None, key=oid, timeout=wait)
            say(f"  order/status {oid:<22} -> stage {st['stage']!r}")
            if st["stage"] != "awaiting approval" or st["approval"] != requests[oid]["awakeable"]:
                problems.append(f"status of {what} order: {st}, expected stage 'awaiting approval' "
                                f"with its awakeable id")

        say("\n== 5. while they wait: the workflows' rows (processor invocations, read-only next to the processor)")
        await asyncio.sleep(1.5)  # > suspend_after (1 s)
        rows = {r["key"]: r for r in invocations(proc.state_dir, app_name) if r["target"] == "order/run"}
        for oid in ids.values():
            r = rows.get(oid, {})
            say(f"  {oid:<22} {r.get('id', '?'):<34} {r.get('status', 'missing')}")
        say("  (suspended: evicted from memory, replayed when the awakeable or the timer completes; running: still\n"
            "   in memory, within its suspend_after window)")

        say("\n== 6. decide")
        await client.resolve_awakeable(requests[ids["approve"]]["awakeable"], "alice@ops")
        say(f"  resolve_awakeable({ids['approve']}: 'alice@ops')")
        await client.reject_awakeable(requests[ids["reject"]]["awakeable"], "card flagged by the fraud check")
        say(f"  reject_awakeable({ids['reject']}: 'card flagged by the fraud check')")
        say(f"  {ids['timeout']}: nobody answers; its {args.approval_timeout:g}s timer fires")
        await client.cancel(invs["cancel"])
        say(f"  cancel({invs['cancel']}): {ids['cancel']} is called off by an operator")

        say("\n== 7. the workflows' outputs (Client.workflow_output)")
        outputs: dict[str, Any] = {}
        for what, oid in ids.items():
            outputs[what] = await client.workflow_output("order", oid, timeout=wait)
            out = outputs[what]
            say(f"  {oid}: {out['status']}" + (f" ({out['reason']})" if "reason" in out else
                                              f" (approved by {out.get('approved_by')})"))
            say(f"      steps:         {', '.join(out['steps'])}")
            say(f"      compensations: {', '.join(out['compensations']) or '-'}")
        say(f"  all four finished {time.monotonic() - t0:.1f}s after they were submitted")

        say("\n== 8. the stage each one ended in (order/status) and the steps that actually ran (ledger)")
        runs = ledger(ledger_path, run + "-")
        rows_out = []
        for what, oid in ids.items():
            st = await client.call("order/status", None, key=oid, timeout=wait)
            ran = [r[1] for r in runs if r[0] == oid]
            rows_out.append([oid, str(st["stage"]), " -> ".join(ran)])
            expect = ["reserve", "charge", "ship"] if what == "approve" else ["reserve", "charge", "refund", "release"]
            if ran != expect:
                problems.append(f"{what} order: the ledger shows {ran}, expected {expect} (each once, in order)")
            final = "shipped" if what == "approve" else "cancelled"
            if st["stage"] != final or outputs[what]["status"] != final:
                problems.append(f"{what} order ended in stage {st['stage']!r} / status "
                                f"{outputs[what]['status']!r}, expected {final!r}")
        say(table(["order", "stage", "side effects, in the order they ran"], rows_out))
        if outputs["reject"].get("reason", "").split(":")[0] != "AwakeableRejected":
            problems.append(f"reject order's reason: {outputs['reject'].get('reason')!r}")
        if not outputs["timeout"].get("reason", "").startswith("no approval within"):
            problems.append(f"timeout order's reason: {outputs['timeout'].get('reason')!r}")
        if outputs["cancel"].get("reason", "").split(":")[0] != "Cancelled":
            problems.append(f"cancel order's reason: {outputs['cancel'].get('reason')!r}")
        if outputs["approve"].get("approved_by") != "alice@ops":
            problems.append(f"approve order: approved_by {outputs['approve'].get('approved_by')!r}")

        say(f"\n== 9. submit {ids['approve']} again: a workflow runs once per id")
        await client.submit_workflow("order", ids["approve"], orders["approve"])
        again = await client.workflow_output("order", ids["approve"], timeout=wait)
        ran = [r[1] for r in ledger(ledger_path, ids["approve"])]
        say(f"  output: {again['status']}, tracking {again.get('tracking')}; ledger entries for it: {len(ran)}")
        if again != outputs["approve"] or len(ran) != 3:
            problems.append(f"re-submitting the approved order gave {again} and {len(ran)} ledger entries")
    approvals.close()
    return problems


def run_demo(args: argparse.Namespace) -> int:
    app_name, approvals_topic = names()
    bootstrap = args.bootstrap_servers
    run = "s" + time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
    state_dir = Path(args.state_dir).resolve()
    ledger_path = state_dir / "ledger.txt"
    check_reachable(bootstrap)

    say(f"== 1. topics on {bootstrap}")
    ensure_topics(bootstrap, [approvals_topic], PARTITIONS)
    say(f"  output {approvals_topic}; the processor creates {app_name}.inbox, .results, .changelog, .dlq")

    say("\n== 2. start the processor")
    proc = Processor(APP_SPEC, bootstrap, state_dir, env={"SAGA_LEDGER": str(ledger_path)})
    with running(proc, args.timeout):
        wait_for(f"{app_name}.results", lambda: bool(end_offsets(bootstrap, f"{app_name}.results")), 30)
        problems = asyncio.run(drive(args, proc, run, ledger_path))
        if log_errors := proc.problems():
            n = sum(" ERROR " in ln for ln in log_errors)
            say(f"\nnote: the processor logged {n} ERROR(s) (not failing the demo for them; the results are "
                "checked above):")
            say("\n".join(f"  {ln}" for ln in log_errors))
        say("\n== 10. stop the processor (SIGTERM)")
        code = proc.stop(args.timeout)
        say(f"  exited with status {code}")
        if code != 0:
            problems.append(f"the processor exited with status {code}")
    if problems:
        say("\ndemo FAILED:\n  " + "\n  ".join(problems))
        say(f"-- processor log (last 40 lines of {rel(proc.log_path)}):\n{proc.tail()}")
        return 1
    say("\nOK: approved -> reserve, charge, ship; rejected, timed out and cancelled -> reserve, charge, then refund "
        "and release in reverse order; every side effect ran once; a second submit returned the first result; "
        "clean shutdown")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.saga.demo", description="Run the saga example.")
    parser.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"))
    parser.add_argument("--state-dir", default=str(REPO / ".demo-state" / "saga"))
    parser.add_argument("--approval-timeout", type=float, default=3.0,
                        help="seconds the third order waits for an approval before it is compensated")
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
