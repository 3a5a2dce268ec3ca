from __future__ import annotations

import random

import pytest

from processor.state import keys as k


def test_each_namespace_has_its_own_leading_byte() -> None:
    namespaces = [k.INVOCATION, k.JOURNAL, k.STATE, k.INBOX, k.TIMER, k.DEDUP, k.META, k.LOCAL]
    assert all(len(ns) == 1 for ns in namespaces)
    assert len(set(namespaces)) == len(namespaces)
    assert k.invocation_key("x")[:1] == k.INVOCATION
    assert k.dedup_key("x")[:1] == k.DEDUP
    assert k.meta_key("x")[:1] == k.META
    assert k.local_key("x")[:1] == k.LOCAL


@pytest.mark.parametrize("inv", ["", "a", "inv-1", "ünïcødé/🙂", "x" * 300])
@pytest.mark.parametrize("seq", [0, 1, 255, 256, 2**32 - 1])
def test_journal_key_round_trips(inv: str, seq: int) -> None:
    key = k.journal_key(inv, seq)
    assert k.parse_journal_key(key) == (inv, seq)
    assert key.startswith(k.journal_prefix(inv))


def test_state_inbox_and_timer_keys_round_trip() -> None:
    assert k.parse_state_key(k.state_key("cart", "user:1", "items")) == ("cart", "user:1", "items")
    assert k.parse_state_key(k.state_key("", "", "")) == ("", "", "")
    assert k.parse_inbox_key(k.inbox_key("cart", "u1", 2**64 - 1)) == ("cart", "u1", 2**64 - 1)
    assert k.parse_timer_key(k.timer_key(1_700_000_000_000, "inv", 7)) == (1_700_000_000_000, "inv", 7)
    assert k.state_key("o", "k", "n").startswith(k.state_prefix("o", "k"))
    assert k.inbox_key("o", "k", 1).startswith(k.inbox_prefix("o", "k"))
    assert k.inbox_key("o", "k", 1).startswith(k.INBOX)


def test_journal_keys_sort_by_seq_and_never_interleave_even_for_prefix_ids() -> None:
    ids = ["ab", "abc", "a", "b", "ab\x00", "abd"]
    all_keys = sorted(k.journal_key(i, s) for i in ids for s in (0, 1, 2, 255, 256, 70_000))
    runs: list[str] = []
    for key in all_keys:
        inv, _ = k.parse_journal_key(key)
        if not runs or runs[-1] != inv:
            runs.append(inv)
    assert sorted(runs) == sorted(ids), "each invocation's entries form one contiguous run"
    for inv in ids:
        seqs = [k.parse_journal_key(x)[1] for x in all_keys if k.parse_journal_key(x)[0] == inv]
        assert seqs == [0, 1, 2, 255, 256, 70_000]
        prefix = k.journal_prefix(inv)
        assert [x for x in all_keys if x.startswith(prefix)] == [k.journal_key(inv, s) for s in seqs]


def test_state_prefix_of_one_object_key_does_not_cover_a_longer_key() -> None:
    assert not k.state_key("cart", "user:10", "n").startswith(k.state_prefix("cart", "user:1"))
    assert not k.inbox_key("cart", "u10", 0).startswith(k.inbox_prefix("cart", "u1"))


def test_timer_keys_sort_by_due_time_across_invocations() -> None:
    rng = random.Random(7)
    timers = [(rng.randrange(0, 2**48), f"inv-{rng.randrange(1000)}", rng.randrange(100))
              for _ in range(2000)]
    timers += [(5, "zzz", 0), (5, "a", 9), (256, "a", 0), (255, "zzzz", 0)]
    by_key = sorted(timers, key=lambda t: k.timer_key(*t))
    assert [t[0] for t in by_key] == sorted(t[0] for t in timers)


def test_inbox_keys_sort_by_seq_within_one_object_key() -> None:
    seqs = [0, 1, 255, 256, 2**32, 2**40 + 3]
    keys = [k.inbox_key("o", "k", s) for s in reversed(seqs)]
    assert [k.parse_inbox_key(x)[2] for x in sorted(keys)] == seqs


def test_prefix_end_bounds_every_key_with_the_prefix() -> None:
    assert k.prefix_end(b"T") == b"U"
    assert k.prefix_end(b"a\xff") == b"b"
    assert k.prefix_end(b"\xff\xff") is None
    assert k.prefix_end(b"") is None
    prefix = k.journal_prefix("inv")
    end = k.prefix_end(prefix)
    assert end is not None
    assert prefix <= k.journal_key("inv", 2**32 - 1) < end
    assert not prefix <= k.journal_key("inw", 0) < end


def test_bad_components_and_oversized_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        k.journal_key("x", -1)
    with pytest.raises(ValueError):
        k.journal_key("x", 2**32)
    with pytest.raises(ValueError):
        k.timer_key(2**64, "x", 0)
    with pytest.raises(k.KeyTooLongError):
        k.state_key("o", "k" * 600, "n")


def test_parsers_reject_other_namespaces_and_malformed_keys() -> None:
    with pytest.raises(ValueError):
        k.parse_journal_key(k.timer_key(1, "a", 0))
    with pytest.raises(ValueError):
        k.parse_journal_key(k.journal_key("a", 1) + b"\x00")
    with pytest.raises(ValueError):
        k.parse_timer_key(k.timer_key(1, "a", 0)[:-1])
