"""The chaos verifier itself (no broker): it passes a clean run and names each kind of violation, so a
green chaos run means something."""

from __future__ import annotations

from typing import Any

from processor._engine.routing import partition_for_key
from tests.chaos.verify import Out, Verdict, check_outputs, check_state
from tests.chaos.workload import spread_keys

P = 6


def _clean() -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]], list[dict[str, Any]], list[Out]]:
    counts = [(k, {"id": f"m{i}{k}", "src": "m", "t": 0.0}) for i in range(3) for k in ("c-0", "c-1")]
    sleeps = [{"id": "s1"}, {"id": "s2"}]
    asks: list[dict[str, Any]] = [{"id": "a1", "x": 3, "callee": "b-0"}, {"id": "a2", "x": 4, "callee": "b-0"}]
    outs: list[Out] = []
    n: dict[str, int] = {}
    for k, e in counts:
        n[k] = n.get(k, 0) + 1
        outs.append(Out(partition=partition_for_key(k.encode(), P), offset=len(outs),
                        value={"kind": "count", "key": k, "count": n[k], "id": e["id"], "inv": "inv-1-x"}))
    outs += [Out(partition=0, offset=100 + i, value={"kind": "sleep", "id": s["id"], "ms": 1000})
             for i, s in enumerate(sleeps)]
    outs += [Out(partition=1, offset=200 + i, value={"kind": "call", "id": a["id"], "callee": "b-0", "x": a["x"],
                                                      "answer": {"square": a["x"] ** 2, "nth": i + 1}})
             for i, a in enumerate(asks)]
    return counts, sleeps, asks, outs


def _check(outs: list[Out]) -> Verdict:
    counts, sleeps, asks, _ = _clean()
    return check_outputs(counts=counts, sleeps=sleeps, asks=asks, outputs=outs, partitions=P)


def test_a_clean_run_has_no_violations() -> None:
    v = _check(_clean()[3])
    assert (v.violations, v.duplicates, v.losses, v.phantoms) == ([], 0, 0, 0)
    assert v.inputs == {"count": 6, "sleep": 2, "call": 2}


def test_a_repeated_output_is_a_duplicate_and_breaks_the_count_sequence() -> None:
    outs = _clean()[3]
    v = _check([*outs, Out(partition=outs[0].partition, offset=999, value=outs[0].value)])
    assert v.duplicates == 1 and v.losses == 0
    assert any("more than one output" in x for x in v.violations)
    assert any("not 1..n" in x for x in v.violations)


def test_a_missing_sleep_output_is_a_loss() -> None:
    v = _check([o for o in _clean()[3] if o.value.get("id") != "s2"])
    assert v.losses == 1
    assert any("sleep: 1 inputs with no output" in x and "s2" in x for x in v.violations)


def test_a_count_emitted_twice_by_two_partitions_is_a_gap_in_the_sequence() -> None:
    outs = list(_clean()[3])
    i = next(i for i, o in enumerate(outs) if o.value.get("key") == "c-0" and o.value["count"] == 2)
    outs[i] = Out(partition=outs[i].partition, offset=outs[i].offset, value={**outs[i].value, "count": 1})
    v = _check(outs)
    assert v.duplicates == 0 and any("c-0" in x and "not 1..n" in x for x in v.violations)


def test_a_wrong_answer_and_a_callee_count_out_of_step_are_named() -> None:
    outs = _clean()[3]
    outs[-1] = Out(partition=1, offset=201, value={**outs[-1].value, "answer": {"square": 15, "nth": 1}})
    v = _check(outs)
    assert any("wrong answers" in x for x in v.violations)
    assert any("per-key call counts" in x for x in v.violations)


def test_state_on_a_foreign_partition_and_a_wrong_final_count_are_named() -> None:
    counts, _, asks, _ = _clean()
    home = partition_for_key(b"c-0", P)
    other = (home + 1) % P
    state = [(home, "counter", "c-0", "count", 2), (other, "counter", "c-0", "count", 1),
             (partition_for_key(b"c-1", P), "counter", "c-1", "count", 3),
             (partition_for_key(b"b-0", P), "answerer", "b-0", "answered", 2)]
    v = Verdict()
    check_state(v, counts=counts, asks=asks, state=state, owned={p: "i1" for p in range(P)}, partitions=P)
    assert len(v.violations) == 2
    assert "final state is wrong" in v.violations[0] and "counter/c-0 count = 2 (want 3)" in v.violations[0]
    assert "does not own them" in v.violations[1]


def test_spread_keys_gives_every_partition_keys() -> None:
    keys = spread_keys("c", 24, P)
    assert len(keys) == 24
    assert {partition_for_key(k.encode(), P) for k in keys} == set(range(P))
