"""The cluster-wide CLI without a broker: registry records, which instances count as live, whose
answer counts for a partition, merging and rendering, and the command line's errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from processor._admin.registry import InstanceRecord, admin_url
from processor._cli import main
from processor._cluster import merge, render
from processor._cluster.discovery import Member, judge
from processor._cluster.fanout import Answer
from tests.kafka_support import REPO

NOW = 1_750_000_000_000


def _rec(iid: str, partitions: tuple[int, ...] = (), beat_ago_s: float = 1.0) -> InstanceRecord:
    return InstanceRecord(app="shop", instance_id=iid, admin_url=f"http://127.0.0.1:1/{iid}", host="h", pid=1,
                          started_ms=NOW - 60_000, heartbeat_ms=int(NOW - beat_ago_s * 1000), partitions=partitions)


def _member(iid: str, *partitions: int) -> Member:
    return Member(instance_id=iid, client_id="rdkafka", host="/127.0.0.1", partitions=partitions)


def _listing(iid: str, partitions: list[int], rows: list[dict[str, Any]], status: int = 200) -> Answer:
    body = {"partitions": partitions, "invocations": rows, "complete": True} if status == 200 else {"error": "busy"}
    return Answer(instance=_rec(iid, tuple(partitions)), status=status, body=body)


def _row(p: int, inv: str, created: str = "2025-06-01 12:00:00", status: str = "running") -> dict[str, Any]:
    return {"partition": p, "id": inv, "target": "acct/handle", "key": "k", "status": status, "attempt": 0,
            "created": created, "finished": "-", "paused_reason": None, "failure": None}


# -- registry records ------------------------------------------------------------------------------

def test_a_registry_record_round_trips_and_ignores_fields_a_newer_build_added() -> None:
    r = _rec("i1", (0, 2))
    assert InstanceRecord.decode(r.encode()) == r
    newer = r.encode()[:-1] + b',"zone":"eu-1"}'
    assert InstanceRecord.decode(newer) == r
    with pytest.raises(ValueError, match="not an instance record"):
        InstanceRecord.decode(b'{"app": "shop"}')
    with pytest.raises(ValueError):
        InstanceRecord.decode(b"garbage")


def test_an_ipv6_admin_host_is_bracketed_in_its_url() -> None:
    assert admin_url("::1", 8088) == "http://[::1]:8088"
    assert admin_url("10.0.0.7", 8088) == "http://10.0.0.7:8088"


# -- liveness --------------------------------------------------------------------------------------

def test_a_record_counts_only_while_its_instance_is_a_group_member() -> None:
    judged = judge([_rec("i1"), _rec("i2", beat_ago_s=0.5)], [_member("i1", 0)], NOW)
    assert [(j.record.instance_id, j.live) for j in judged] == [("i1", True), ("i2", False)]
    assert "not a member of the consumer group" in judged[1].why  # fresh heartbeat, but SIGKILLed


def test_without_the_groups_members_a_record_counts_while_its_heartbeat_is_fresh() -> None:
    judged = judge([_rec("i1", beat_ago_s=3), _rec("i2", beat_ago_s=60)], None, NOW)
    assert [(j.record.instance_id, j.live) for j in judged] == [("i1", True), ("i2", False)]
    assert judged[1].why.endswith("stale")


# -- whose answer counts -------------------------------------------------------------------------------

def test_each_partition_comes_from_the_instance_the_group_assigned_it_to() -> None:
    answers = [_listing("i1", [0, 1], []), _listing("i2", [1, 2], [])]  # i2 was frozen: 1 moved to i1
    cov = merge.coverage(answers, {0: "i1", 1: "i1", 2: "i2"}, 3)
    assert cov.accepted == {"i1": frozenset({0, 1}), "i2": frozenset({2})}
    assert cov.missing == ()
    assert any("instance i2 still serves it, but the group assigned it to i1" in n for n in cov.notes)


def test_during_a_rebalance_one_claimant_counts_and_two_count_for_nothing() -> None:
    answers = [_listing("i1", [0, 1], []), _listing("i2", [1], [])]
    cov = merge.coverage(answers, {}, 3)  # the group assigns nothing right now
    assert cov.accepted == {"i1": frozenset({0}), "i2": frozenset()}
    assert cov.missing == (1, 2)
    assert any("claimed by i1, i2" in n for n in cov.notes)


def test_an_instance_that_does_not_answer_leaves_its_partitions_missing() -> None:
    answers = [_listing("i1", [0], []), _listing("i2", [], [], status=503)]
    cov = merge.coverage(answers, {0: "i1", 1: "i2"}, 2)
    assert cov.missing == (1,)
    assert cov.notes == ("instance i2 did not answer: busy",)


def test_merged_rows_come_only_from_accepted_partitions_oldest_first_within_the_limit() -> None:
    t0, t1, t2 = "2025-06-01 12:00:00", "2025-06-01 12:00:01", "2025-06-01 12:00:02"
    answers = [_listing("i1", [0], [_row(0, "inv-0-b", t2), _row(0, "inv-0-a", t1)]),
               _listing("i2", [0, 1], [_row(0, "inv-0-stale", status="running"), _row(1, "inv-1-c", t0)])]
    cov = merge.coverage(answers, {0: "i1", 1: "i2"}, 2)
    rows, complete = merge.invocations(answers, cov, limit=10)
    assert [(r["id"], r["instance"]) for r in rows] == [("inv-1-c", "i2"), ("inv-0-a", "i1"), ("inv-0-b", "i1")]
    assert complete
    assert [r["id"] for r in merge.invocations(answers, cov, limit=2)[0]] == ["inv-1-c", "inv-0-a"]


def test_merged_timers_are_in_due_order() -> None:
    def t(p: int, due: int) -> dict[str, Any]:
        return {"due_ms": due, "due": str(due), "invocation_id": f"inv-{p}-x", "seq": 1, "partition": p,
                "kind": "sleep", "attempt": 0}
    answers = [Answer(instance=_rec("i1"), status=200, body={"partitions": [0], "timers": [t(0, 5), t(0, 9)]}),
               Answer(instance=_rec("i2"), status=200, body={"partitions": [1], "timers": [t(1, 7)]})]
    cov = merge.coverage(answers, {0: "i1", 1: "i2"}, 2)
    assert [(x["due_ms"], x["instance"]) for x in merge.timers(answers, cov, limit=2)] == [(5, "i1"), (7, "i2")]


# -- rendering ---------------------------------------------------------------------------------------

def _invocation() -> dict[str, Any]:
    return {**_row(1, "inv-1-x"), "instance": "i2", "in_memory": True, "input": {"id": "e1"}, "result": None,
            "retry_at": "-", "journal": [
                {"seq": 0, "kind": "get", "name": "n", "state": "done", "attempts": 1, "value": None,
                 "failure": None, "retry_at": None, "due": None},
                {"seq": 1, "kind": "run", "name": "charge", "state": "retrying", "attempts": 4, "value": None,
                 "failure": {"type": "ConnectionError", "message": "unreachable"},
                 "retry_at": "2025-06-01 12:00:09", "due": None}]}


def test_a_journal_shows_a_header_with_the_retrying_steps_error_and_every_entry() -> None:
    text = render.journal(_invocation())
    assert "status      running  (attempt 0; partition 1 on instance i2; in memory)" in text
    assert ("error       ConnectionError: unreachable (step #1 'charge', attempt 4, retrying at "
            "2025-06-01 12:00:09)") in text
    assert 'input       {"id":"e1"}' in text and "result      -" in text
    assert "#1    run          charge               retrying attempts=4  ConnectionError: unreachable" in text


def test_a_failed_invocations_own_failure_is_its_error_and_long_values_are_cut() -> None:
    inv = _invocation() | {"failure": "Killed: the invocation was killed", "input": "x" * 500}
    text = render.journal(inv)
    assert "error       Killed: the invocation was killed" in text
    assert "… (500 chars)" in text


def test_a_journal_of_one_paused_after_its_retries_shows_its_error_and_the_key_it_holds() -> None:
    reason = ("retries exhausted after 20 attempt(s): KeyError: 'amount' (it holds key 'k1' of acct: later "
              "invocations of the key wait until it is retried or killed)")
    inv = _invocation() | {"status": "paused", "failure": "KeyError: 'amount'", "paused_reason": reason}
    text = render.journal(inv)
    assert "error       KeyError: 'amount'" in text
    assert f"paused      {reason}" in text


def test_a_journal_of_a_queued_invocation_says_what_it_waits_for_and_no_error() -> None:
    reason = "waiting for a concurrency slot of jobs/work: 2 running per partition"
    inv = _invocation() | {"status": "queued", "journal": [], "paused_reason": reason}
    text = render.journal(inv)
    assert "error       -" in text
    assert f"waiting     {reason}" in text


def test_a_multi_line_reason_continues_under_its_row() -> None:
    text = render.invocations_table([_row(0, "inv-0-a") | {"paused_reason": "diverged\njournaled: #0 run('a')",
                                                           "instance": "i1"}], instances=True)
    lines = text.splitlines()
    assert lines[1].endswith("diverged") and lines[2].strip() == "journaled: #0 run('a')"
    assert lines[-1] == "1 invocation(s)"


# -- the command line ----------------------------------------------------------------------------------

def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["invocations", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "(default: 100, at most 10000)" in out and "(default: $KAFKA_BOOTSTRAP_SERVERS" in out
    assert "(default: 10)" in out and "(default: $PROCESSOR_ADMIN_TOKEN)" in out


def test_a_bad_flag_exits_2_with_usage_and_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["journal", "--app", "shop", "--no-such-flag", "inv-0-x"])
    assert e.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_a_missing_state_dir_or_app_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["invocations", "--app", "shop", "--offline", "--state-dir", str(tmp_path / "nope")]) == 2
    assert f"no state dir {tmp_path / 'nope'}" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "last-instance-id").write_text("i1\n")
    assert main(["invocations", "--app", "shop", "--offline", "--state-dir", str(tmp_path)]) == 2
    assert "no state for app 'shop'" in (err := capsys.readouterr().err) and "apps there: other" in err


def test_an_unreachable_broker_exits_2_saying_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["instances", "--app", "shop", "--bootstrap-servers", "127.0.0.1:1", "--timeout", "1"]) == 2
    assert "processor: cannot reach Kafka at 127.0.0.1:1 within 1s" in capsys.readouterr().err


def test_an_action_without_the_token_or_a_malformed_id_exits_2(capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROCESSOR_ADMIN_TOKEN", raising=False)
    assert main(["kill", "inv-0-x", "--app", "shop", "--offline"]) == 2
    assert "kill needs the instances' admin token" in capsys.readouterr().err
    assert main(["retry", "nonsense", "--app", "shop", "--offline", "--admin-token", "t"]) == 2
    assert "not an invocation id: 'nonsense'" in capsys.readouterr().err


def test_a_reader_that_closes_the_pipe_is_no_error() -> None:
    code = ("from processor._cluster.commands import _emit\n"
            "_emit(['x' * 100] * 100_000, [])\n")
    r = subprocess.run(f"{sys.executable} -c \"{code}\" | head -1", shell=True, capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.stdout == "x" * 100 + "\n"
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
