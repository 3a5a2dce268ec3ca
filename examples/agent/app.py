"""An agent loop as a durable workflow: every model call and every tool call is a step, and a risky
tool waits for a human approval — up to 24 hours — on an awakeable raced against a durable timer.

Run it with ``python -m processor run examples.agent.app:app --bootstrap-servers HOST:PORT
--state-dir DIR`` and start a task with ``p.Client(...).submit_workflow("agent", task_id,
{"prompt": ...})`` (see README.md and demo.py next to this file). The app id ``agent`` names the
consumer group and the internal topics; ``AGENT_PREFIX`` (default empty) is put in front of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import processor as p

PREFIX = os.environ.get("AGENT_PREFIX", "")
MAX_TURNS = 8
APPROVAL_WAIT = timedelta(hours=24)

# No input topic (tasks arrive through the Client), so the app names its partition count.
# journal_retention: the demo prints a finished agent's journal (`processor journal`)
app = p.App(f"{PREFIX}agent", partitions=4, suspend_after=timedelta(seconds=1), journal_retention=timedelta(hours=1))
agent = app.workflow("agent")            # one workflow per task id


def _ledger(what: str, detail: str = "") -> None:
    """One line per step-body execution in the file named by AGENT_LEDGER (if set): the demo counts
    them to show that nothing ran twice."""
    path = os.environ.get("AGENT_LEDGER")
    if path:
        step = p.current_step()
        with Path(path).open("a") as f:
            f.write(f"{step.invocation_id} {what} #{step.seq} {detail}\n")


# -- the model (a deterministic fake) --------------------------------------------------------------
# A real model call is slow, costs money and is not deterministic: exactly what belongs in a step.
# Its answer is journaled, so a replay after a crash gets the same decision without calling it again.

def fake_llm(history: list[dict[str, Any]]) -> dict[str, Any]:
    time.sleep(0.05)                     # "inference": a sync body runs on a worker thread
    turn = sum(1 for m in history if m["role"] == "assistant") + 1
    _ledger("model", f"turn={turn}")
    done = {m["tool"]: m["content"] for m in history if m["role"] == "tool"}
    found = re.search(r"order (\S+?)[ .,]", history[0]["content"] + " ")
    order_id = found.group(1) if found else "?"
    if "lookup_order" not in done:
        return {"type": "tool_call", "tool": "lookup_order", "args": {"order": order_id},
                "thought": f"I need the details of order {order_id}."}
    info = done["lookup_order"]
    if "issue_refund" not in done:
        return {"type": "tool_call", "tool": "issue_refund",
                "args": {"order": order_id, "amount": info["paid"], "reason": "arrived broken"},
                "thought": f"The {info['item']} was delivered broken; refund {info['paid']:.2f}."}
    refund = done["issue_refund"]
    if "send_email" not in done:
        body = (f"We refunded {refund['amount']:.2f} for your broken {info['item']} (ref {refund['refund']})."
                if "refund" in refund else
                f"We could not refund your {info['item']} yet ({refund['error']}); a colleague will follow up.")
        return {"type": "tool_call", "tool": "send_email", "args": {"to": info["customer"], "body": body},
                "thought": "Tell the customer what happened."}
    outcome = "refunded" if "refund" in refund else "not refunded"
    return {"type": "final", "content": f"Order {order_id}: {outcome}; customer {info['customer']} notified."}


# -- the tools (fakes) ----------------------------------------------------------------------------
# Tool bodies are at-least-once like any step: a real refund API gets the step's idempotency key.

def _ref(prefix: str) -> str:
    return prefix + hashlib.sha256(p.current_step().idempotency_key.encode()).hexdigest()[:12]


async def lookup_order(args: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    _ledger("tool:lookup_order", args["order"])
    return {"order": args["order"], "customer": "ada@example.com", "item": "mug-7", "paid": 18.0,
            "status": "delivered"}


async def issue_refund(args: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    ref = _ref("rfd_")
    _ledger("tool:issue_refund", ref)
    return {"refund": ref, "amount": args["amount"]}


async def send_email(args: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    ref = _ref("msg_")
    _ledger("tool:send_email", ref)
    return {"message_id": ref, "to": args["to"]}


TOOLS: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "lookup_order": lookup_order, "issue_refund": issue_refund, "send_email": send_email}
RISKY = {"issue_refund"}                 # tools a human must approve first


# -- the loop ------------------------------------------------------------------------------------

@agent.run()
async def run(ctx: p.WorkflowContext, task: dict[str, Any]) -> dict[str, Any]:
    history: list[dict[str, Any]] = [{"role": "user", "content": task["prompt"]}]
    for turn in range(1, MAX_TURNS + 1):
        ctx.set("stage", f"turn {turn}: thinking")
        decision = await ctx.run("model", fake_llm, list(history))
        history.append({"role": "assistant", **decision})
        if decision["type"] == "final":
            ctx.set("stage", "done")
            return {"answer": decision["content"], "turns": turn, "history": history}

        tool, args = decision["tool"], decision["args"]
        if tool in RISKY:
            # Ask a human. The id goes into state, where `status` shows it; whoever approves calls
            # Client.resolve_awakeable(id, ...) or reject_awakeable(id, reason). The 24 h wait is a
            # durable timer: it survives restarts and crashes, and nothing above re-runs on replay.
            awakeable_id, approval = ctx.awakeable()
            ctx.set("pending_approval", {"awakeable": awakeable_id, "tool": tool, "args": args})
            ctx.set("stage", f"turn {turn}: awaiting approval for {tool}")
            try:
                approver = await approval.with_timeout(APPROVAL_WAIT)
            except TimeoutError:
                result: dict[str, Any] = {"error": f"no approval within {APPROVAL_WAIT}"}
            except p.TerminalError as e:   # rejected
                result = {"error": f"denied: {e.message}"}
            else:
                result = await ctx.run(f"tool:{tool}", TOOLS[tool], args)
                result = {**result, "approved_by": approver}
            ctx.clear("pending_approval")
        else:
            ctx.set("stage", f"turn {turn}: running {tool}")
            result = await ctx.run(f"tool:{tool}", TOOLS[tool], args)
        history.append({"role": "tool", "tool": tool, "content": result})
    ctx.set("stage", "gave up")
    return {"answer": None, "turns": MAX_TURNS, "history": history}


@agent.handler()                         # shared: runs next to `run`, reads its state
async def status(ctx: p.WorkflowSharedContext, _: Any) -> dict[str, Any]:
    return {"stage": await ctx.get("stage"), "pending_approval": await ctx.get("pending_approval")}
