"""``processor invocations | journal | state | timers | cancel | kill | purge | retry | instances``:
the argument parsers and what each command does. Exit codes: 0 done; 1 not found, or the action does
not apply; 2 a wrong app, state dir, broker, setting or flag; 3 part of the app did not answer (a
partition without a live owner answering: a rebalance, an instance unreachable) — what did answer is
printed."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from processor import _journal_export as export
from processor import _kafka_config
from processor._admin import api
from processor._admin.registry import InstanceRecord
from processor._cluster import fanout, local, merge, render
from processor._cluster.discovery import INCOMPLETE, NOT_FOUND, USAGE, CliError, Cluster, discover
from processor._engine import kafka as kio
from processor._engine import routing
from processor._engine.records import Status
from processor._errors import ConfigurationError

COMMANDS = ("invocations", "journal", "state", "timers", "cancel", "kill", "purge", "retry", "instances")
ACTIONS = {
    "cancel": "cancel an invocation: its handler gets p.InvocationCancelled at its pending await (compensation runs)",
    "kill": "kill an invocation: it fails at once with Killed, no compensation",
    "purge": "delete a finished invocation's row and journal now",
    "retry": "run a backing-off or paused invocation now",
}


def add_parsers(sub: Any) -> None:
    """The introspection and action subcommands of ``processor``."""
    inv = sub.add_parser("invocations", help="list invocations across the app's live instances",
                         description="Invocations across the app's live instances (or, with none, a --state-dir's "
                                     "stores), oldest first.")
    _common(inv)
    inv.add_argument("--status", choices=[s.value for s in Status], default=None,
                     help="only this status (default: any)")
    inv.add_argument("--handler", default=None, metavar="SERVICE[/HANDLER]", help="only this handler or service "
                     "(default: any)")
    inv.add_argument("--key", default=None, help="only this key (default: any)")
    inv.add_argument("--older-than", type=float, default=None, metavar="SECONDS",
                     help="only those created at least this long ago (default: any age)")
    inv.add_argument("--limit", type=int, default=100, metavar="N",
                     help="at most N rows (from each instance, and in all) (default: 100, at most 10000)")
    jr = sub.add_parser("journal", help="one invocation: status, error, attempts, result and its journal's values",
                        description="One invocation, asked of the instance that owns its partition: a header "
                                    "(status, error, attempts, input, result) and every journal entry with its value.")
    jr.add_argument("invocation_id", nargs="*", help="the invocation (with --export: any number; none: every "
                    "invocation in flight)")
    jr.add_argument("--export", metavar="FILE", default=None,
                    help="write the journals byte for byte to FILE, one JSON object per line, for "
                         "processor.testing.replay (docs/testing.md) (default: show one journal)")
    _common(jr)
    st = sub.add_parser("state", help="the state of a virtual object's or workflow's key",
                        description="The state of (OBJECT, KEY), from the instance that owns the key's partition.")
    st.add_argument("object", help="the virtual object or workflow name")
    st.add_argument("key")
    _common(st)
    tm = sub.add_parser("timers", help="the timers due next across the app", description="Durable timers due "
                        "next (sleeps, delayed sends, retries, purges) across the app's partitions.")
    _common(tm)
    tm.add_argument("--limit", type=int, default=100, metavar="N", help="at most N timers (default: 100)")
    for name, text in ACTIONS.items():
        a = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}. Sent to the instance that "
                           "owns the invocation's partition, which checks it applies and produces the inbox command "
                           "(docs/operate.md). Needs the admin token.")
        a.add_argument("invocation_id")
        _common(a)
    ins = sub.add_parser("instances", help="the app's instances: admin endpoints, partitions, liveness",
                         description="The instances the registry topic <app>.instances names, judged against the "
                                     "consumer group's members (docs/decisions/009-instance-registry.md).")
    _common(ins)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--app", required=True, help="the app name (its consumer group and topic prefix)")
    p.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), metavar="HOSTS",
                   help="Kafka, to find the app's live instances (default: $KAFKA_BOOTSTRAP_SERVERS; without it "
                        "only --state-dir is read)")
    p.add_argument("--kafka-config", metavar="FILE", default=None,
                   help=f"librdkafka settings for a secured cluster (default: ${_kafka_config.FILE_ENV}); "
                        "see docs/security.md")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="read this state dir's stores when no live instance answers (default: none; without "
                        "Kafka: ./state-dir). A supervisor's dir (--workers N) is read whole")
    p.add_argument("--offline", action="store_true", help="read --state-dir without asking Kafka (default: off)")
    p.add_argument("--admin-token", default=None, metavar="TOKEN",
                   help="the instances' bearer token: actions need it, and reads of instances beyond loopback "
                        "(default: $PROCESSOR_ADMIN_TOKEN)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="for Kafka and for each instance's answer (default: 10)")
    p.add_argument("--json", action="store_true", help="JSON for scripts: one object per line (default: text)")
    p.add_argument("--max-changelog-records", type=int, default=local.MAX_CHANGELOG_RECORDS, metavar="N",
                   help="with no live instance and no --state-dir, read the app's state from its changelog topic "
                        f"if it holds at most N records (default: {local.MAX_CHANGELOG_RECORDS:,}; 0: never)")


@dataclass(slots=True, kw_only=True)
class Context:
    """Where a command's answers come from: live instances, or a state dir's stores."""

    args: argparse.Namespace
    cluster: Cluster | None
    state_dir: Path | None
    token: str | None
    kafka: dict[str, Any] | None = None  # client settings, when Kafka was asked
    notes: list[str] = field(default_factory=list)
    from_changelog: bool = False  # no live instance nor state dir: the changelog, materialized in memory
    _changelog: list[fanout.Answer] | None = None

    @property
    def live(self) -> list[InstanceRecord]:
        return [] if self.cluster is None else self.cluster.live

    @property
    def partitions_total(self) -> int:
        return 0 if self.cluster is None else self.cluster.partitions_total

    def owners(self) -> dict[int, str] | None:
        # the changelog holds every partition's committed state, whoever owns it
        return None if self.cluster is None or self.from_changelog else self.cluster.owners()

    @property
    def source(self) -> str:
        """Where local answers come from, for messages."""
        if self.from_changelog:
            return f"changelog {self.args.app}.changelog"
        return f"stores under {self.state_dir}"

    def local_answers(self, build: Callable[..., dict[str, Any]]) -> list[fanout.Answer]:
        """Answers from the state dir's stores or, with none, from the changelog (read once per command)."""
        if not self.from_changelog:
            assert self.state_dir is not None
            return local.answers(self.state_dir, self.args.app, build)
        assert self.cluster is not None and self.kafka is not None
        return local.changelog_answers(self.kafka, self.args.app, self.cluster.partitions_total, build,
                                       max_records=self.args.max_changelog_records, timeout=self.args.timeout)

    def use_local(self) -> bool:
        """Whether to read the state dir: no live instance to ask. Says why (stderr); CliError when
        there is no state dir either."""
        if self.live:
            return False
        if self.state_dir is None:
            c = self.cluster
            assert c is not None
            members = sorted(m.instance_id for m in c.members)
            why = (f"no live instance of app {c.app!r} serves an admin endpoint "
                   + (f"(group members: {', '.join(members)}, none with a registry record: started without "
                      "--admin-port, or stopping — a stopped member stays in the group for its 6 s session)"
                      if members else "(the consumer group has no members)"))
            if self.args.max_changelog_records <= 0 or self.args.command not in local.READS:
                raise CliError(why + "; to read stores instead, pass --state-dir DIR", INCOMPLETE)
            self.from_changelog = True
            self.notes.append(f"{why}: reading the app's state from {self.source} (as of its last committed cycle)")
            return True
        if self.cluster is not None:
            self.notes.append(f"no live instance of app {self.cluster.app!r} serves an admin endpoint: reading the "
                              f"stores under {self.state_dir} (as of their last commit)")
        return True


def run(args: argparse.Namespace) -> int:
    """Run one introspection or action command; the exit code."""
    out: list[str] = []
    ctx: Context | None = None
    try:
        ctx = _context(args)
        code = _COMMANDS[args.command](ctx, out)
    except CliError as e:
        _emit(out, ctx.notes if ctx else [])
        print(f"processor: {e}", file=sys.stderr)
        return e.code
    _emit(out, ctx.notes)
    return code


def _emit(out: list[str], notes: list[str]) -> None:
    """Print `out` (stdout) and `notes` (stderr); a reader that went away (``| head``) is no error."""
    for n in notes:
        print(f"processor: note: {n}", file=sys.stderr)
    try:
        for line in out:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's own flush at exit must not raise again


def _context(args: argparse.Namespace) -> Context:
    token = args.admin_token or os.environ.get("PROCESSOR_ADMIN_TOKEN") or None
    state_dir = Path(args.state_dir) if args.state_dir else None
    if args.timeout <= 0:
        raise CliError("--timeout must be positive", USAGE)
    if args.offline or not args.bootstrap_servers:
        return Context(args=args, cluster=None, state_dir=state_dir or Path("./state-dir"), token=token)
    try:
        kafka = _kafka_config.resolve(None, file=args.kafka_config)
    except ConfigurationError as e:
        raise CliError(str(e), USAGE) from None
    cluster = discover(args.bootstrap_servers, kafka, args.app, timeout=args.timeout)
    ctx = Context(args=args, cluster=cluster, state_dir=state_dir, token=token,
                  kafka=kio.client_config(args.bootstrap_servers, kafka))
    if cluster.group_state is None:
        ctx.notes.append(f"this principal may not describe consumer group {args.app!r}: instances judged live by "
                         "their heartbeats alone")
    return ctx


def _lines(ctx: Context, rows: Sequence[dict[str, Any]]) -> list[str]:
    return [orjson.dumps(r).decode() for r in rows]


def _finish_coverage(ctx: Context, cov: merge.Coverage) -> int:
    ctx.notes.extend(cov.notes)
    if cov.missing:
        ctx.notes.append(f"partitions {list(cov.missing)} had no live owner answering (a rebalance, or an instance "
                         "restoring or unreachable): their rows are not shown")
        return INCOMPLETE
    return 0


def _answers(ctx: Context, url_path: str, build: Callable[[], Callable[..., dict[str, Any]]]) -> list[fanout.Answer]:
    if ctx.use_local():
        return ctx.local_answers(build())
    return fanout.ask_all(ctx.live, url_path, token=ctx.token, timeout=ctx.args.timeout)


def _invocations(ctx: Context, out: list[str]) -> int:
    a = ctx.args
    params = {k: v for k, v in {"status": a.status, "handler": a.handler, "key": a.key,
                                "older_than_s": None if a.older_than is None else str(a.older_than),
                                "limit": str(a.limit)}.items() if v is not None}
    try:
        q = api.InvocationQuery.parse(params)
    except ValueError as e:
        raise CliError(str(e), USAGE) from None
    answers = _answers(ctx, "/api/invocations?" + urlencode(params), lambda: local.invocations(q))
    cov = merge.coverage(answers, ctx.owners(), ctx.partitions_total)
    rows, complete = merge.invocations(answers, cov, limit=q.limit)
    if not complete:
        ctx.notes.append("an instance stopped listing at its scan budget: filter more narrowly")
    out.extend(_lines(ctx, rows) if a.json else [render.invocations_table(rows, instances=True)])
    return _finish_coverage(ctx, cov)


def _owner(ctx: Context, partition: int) -> InstanceRecord:
    """The live instance whose answer counts for `partition` (``merge.coverage`` over each instance's
    active partitions, asked now); CliError INCOMPLETE when none."""
    answers = fanout.ask_all(ctx.live, "/api/partitions", token=ctx.token, timeout=ctx.args.timeout)
    shaped = [fanout.Answer(instance=x.instance, status=x.status, error=x.error, body=x.body if not x.ok else {
        "partitions": [d["partition"] for d in x.body.get("partitions", ()) if d.get("phase") == "active"]})
        for x in answers]
    cov = merge.coverage(shaped, ctx.owners(), ctx.partitions_total)
    ctx.notes.extend(cov.notes)
    found = merge.owner_answer(shaped, partition, cov)
    if found is None:
        owner = (ctx.owners() or {}).get(partition)
        raise CliError(f"partition {partition} has no live owner answering"
                       + (f" (the group assigned it to {owner}, which has no admin endpoint or is still restoring)"
                          if owner else " (a rebalance, or its instance is restoring or unreachable)")
                       + "; try again shortly", INCOMPLETE)
    return found.instance


def _one(ctx: Context, partition: int, url_path: str, build: Callable[[], Callable[..., dict[str, Any]]],
         what: str) -> dict[str, Any]:
    """The owner's answer for one thing on `partition` (``journal``, ``state``)."""
    if ctx.use_local():
        answers = ctx.local_answers(build())
        cov = merge.coverage(answers, ctx.owners(), ctx.partitions_total)
        ctx.notes.extend(cov.notes)
        found = merge.owner_answer(answers, partition, cov)
        if found is None:
            raise CliError(f"partition {partition} is not in the {ctx.source}"
                           + (" that its current owner left" if ctx.owners() else ""), NOT_FOUND)
        if found.body.get("found") is None:
            raise CliError(f"no {what} on partition {partition} in the {ctx.source}", NOT_FOUND)
        return {**found.body["found"], "instance": found.instance.instance_id}
    owner = _owner(ctx, partition)
    a = fanout.ask(owner, url_path, token=ctx.token, timeout=ctx.args.timeout)
    if a.status == 404:
        raise CliError(f"{a.message} (asked instance {owner.instance_id})", NOT_FOUND)
    if not a.ok:
        raise CliError(f"instance {owner.instance_id} did not answer: {a.message}", INCOMPLETE)
    return {**a.body, "instance": owner.instance_id}


def _partition_of(invocation_id: str) -> int:
    try:
        return routing.partition_of(invocation_id)
    except ValueError as e:
        raise CliError(str(e), USAGE) from None


def _journal(ctx: Context, out: list[str]) -> int:
    if ctx.args.export is not None:
        return _export(ctx, out)
    if len(ctx.args.invocation_id) != 1:
        raise CliError("journal shows one invocation: give its id (several only with --export FILE)", USAGE)
    [inv_id] = ctx.args.invocation_id
    inv = _one(ctx, _partition_of(inv_id), fanout.path("api", "invocations", inv_id),
               lambda: local.invocation(inv_id), f"invocation {inv_id}")
    out.append(orjson.dumps(inv).decode() if ctx.args.json else render.journal(inv))
    return 0


def _exported(ctx: Context, inv_id: str) -> bytes:
    inv = _one(ctx, _partition_of(inv_id), fanout.path("api", "invocations", inv_id) + "?exact=1",
               lambda: local.invocation(inv_id, exact=True), f"invocation {inv_id}")
    return export.line_from_exact(int(inv["partition"]), inv["exact"])


def _export(ctx: Context, out: list[str]) -> int:
    """``journal --export FILE``: the named invocations' journals, or those of every invocation in flight
    (the ones a deploy must be able to resume), byte for byte, for ``processor.testing.replay``."""
    ids: list[str] = list(ctx.args.invocation_id)
    code = 0
    if not ids:
        q = api.InvocationQuery.parse({"limit": str(api.MAX_LIMIT)})
        answers = _answers(ctx, "/api/invocations?" + urlencode({"limit": str(api.MAX_LIMIT)}),
                           lambda: local.invocations(q))
        cov = merge.coverage(answers, ctx.owners(), ctx.partitions_total)
        rows, complete = merge.invocations(answers, cov, limit=api.MAX_LIMIT)
        if not complete:
            ctx.notes.append(f"an instance stopped listing at its scan budget: export by id beyond {api.MAX_LIMIT}")
        ids = [r["id"] for r in rows if r["status"] in {s.value for s in export.IN_FLIGHT}]
        code = _finish_coverage(ctx, cov)
    lines = [_exported(ctx, inv_id) for inv_id in ids]
    try:
        with Path(ctx.args.export).open("wb") as f:
            f.writelines(line + b"\n" for line in lines)
    except OSError as e:
        raise CliError(f"cannot write {ctx.args.export}: {e.strerror}", USAGE) from None
    ctx.notes.append(f"exported {len(lines)} journal(s) to {ctx.args.export}")
    return code


def _state(ctx: Context, out: list[str]) -> int:
    a = ctx.args
    if ctx.cluster is not None:
        partition = routing.partition_for_key(a.key.encode(), ctx.partitions_total)
    else:  # offline: whichever store holds the key's state
        partition = _local_partition_of_key(ctx, a.object, a.key)
    d = _one(ctx, partition, fanout.path("api", "state", a.object, a.key),
             lambda: local.object_state(a.object, a.key, ctx.partitions_total or None), f"state of {a.object}/{a.key}")
    out.append(orjson.dumps(d).decode() if a.json else render.object_state(d))
    return 0


def _local_partition_of_key(ctx: Context, obj: str, key: str) -> int:
    assert ctx.state_dir is not None
    for a in local.answers(ctx.state_dir, ctx.args.app, local.object_state(obj, key, None)):
        if a.body.get("found"):
            return int(a.body["found"]["partition"])
    raise CliError(f"no state of {obj}/{key} in the stores under {ctx.state_dir}", NOT_FOUND)


def _timers(ctx: Context, out: list[str]) -> int:
    limit = ctx.args.limit
    if not 1 <= limit <= api.MAX_LIMIT:
        raise CliError(f"--limit must be within 1..{api.MAX_LIMIT}", USAGE)
    answers = _answers(ctx, f"/api/timers?limit={limit}", lambda: local.timers(limit))
    cov = merge.coverage(answers, ctx.owners(), ctx.partitions_total)
    rows = merge.timers(answers, cov, limit=limit)
    out.extend(_lines(ctx, rows) if ctx.args.json else [render.timers_table(rows)])
    return _finish_coverage(ctx, cov)


def _action(ctx: Context, out: list[str]) -> int:
    action, inv_id = ctx.args.command, ctx.args.invocation_id
    partition = _partition_of(inv_id)
    if not ctx.token:
        raise CliError(f"{action} needs the instances' admin token: --admin-token or PROCESSOR_ADMIN_TOKEN", USAGE)
    if ctx.cluster is None:
        raise CliError(f"{action} asks a live instance: give --bootstrap-servers (a state dir is only read)", USAGE)
    if not ctx.live:
        ctx.state_dir = None
        ctx.args.max_changelog_records = 0  # an action needs a live owner: the changelog is only read
        ctx.use_local()  # raises, saying why
    owner = _owner(ctx, partition)
    a = fanout.ask(owner, fanout.path("api", "invocations", inv_id, action), token=ctx.token,
                   timeout=ctx.args.timeout, method="POST")
    if a.status == 401:
        raise CliError(f"instance {owner.instance_id} refused the token: {a.message}", USAGE)
    if a.status in (404, 409):
        raise CliError(f"{a.message} (instance {owner.instance_id})", NOT_FOUND)
    if not a.ok:
        raise CliError(f"instance {owner.instance_id}: {a.message}", INCOMPLETE)
    body = {**a.body, "instance": owner.instance_id}
    out.append(orjson.dumps(body).decode() if ctx.args.json else
               f"{action} of {inv_id} sent: instance {owner.instance_id} checked it and put the command on partition "
               f"{body.get('partition')} of {ctx.args.app}.inbox; the partition applies it in its next cycle")
    return 0


def _instances(ctx: Context, out: list[str]) -> int:
    c = ctx.cluster
    if c is None:
        raise CliError("instances asks Kafka: give --bootstrap-servers", USAGE)
    assigned = {m.instance_id: m.partitions for m in c.members}
    rows = [render.instance_dict(j, assigned.get(j.record.instance_id) if c.group_state is not None else None)
            for j in c.judged]
    bare = sorted(set(assigned) - {j.record.instance_id for j in c.judged})
    if ctx.args.json:
        out.extend(_lines(ctx, rows))
        out.extend(orjson.dumps({"instance_id": m, "live": True, "why": "a group member without an admin endpoint",
                                 "admin_url": None, "assigned": list(assigned[m])}).decode() for m in bare)
    else:
        out.append(render.instances_table(rows, bare))
        out.append(f"group {c.app}: {c.group_state or 'unknown'}, {len(c.members)} member(s); "
                   f"{c.partitions_total} partitions")
    return 0


_COMMANDS: dict[str, Callable[[Context, list[str]], int]] = {
    "invocations": _invocations, "journal": _journal, "state": _state, "timers": _timers,
    "instances": _instances, **dict.fromkeys(ACTIONS, _action)}
