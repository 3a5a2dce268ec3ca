"""Contract tests every Store backend passes: LMDB (PartitionStore) and the in-memory twin."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from processor import state
from processor.state import keys as k
from processor.state import store as store_module
from processor.state.memory import MemoryStore
from processor.state.store import FORMAT_KEY, PartitionStore, Store, StoreClosedError, StoreFormatError

Factory = Callable[[], Store]


@pytest.fixture(params=["lmdb", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    opened: list[Store] = []

    def make() -> Store:
        s: Store = PartitionStore.open(tmp_path / "p0") if request.param == "lmdb" else MemoryStore()
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def test_public_surface_is_pinned() -> None:
    assert sorted(state.__all__) == sorted([
        "FORMAT_VERSION", "MISSING", "MemoryStore", "Missing", "Overlay", "OverlayError",
        "PartitionState", "PartitionStore", "RestoreCancelled", "RestoreError", "RestoreStats", "Store",
        "StoreClosedError", "StoreError", "StoreFormatError", "restore",
    ])


def test_fresh_store_is_empty_at_offset_zero(make_store: Factory) -> None:
    s = make_store()
    assert s.changelog_offset() == 0
    assert s.count() == 0
    assert list(s.scan(b"")) == []
    assert s.get(b"Sx") is None


def test_apply_puts_deletes_and_records_the_offset(make_store: Factory) -> None:
    s = make_store()
    s.apply([(b"Sa", b"1"), (b"Sb", b"2"), (b"Sc", b"3")], 3)
    s.apply([(b"Sb", None), (b"Sa", b"1'"), (b"Sz", None)], 7)
    assert s.get(b"Sa") == b"1'"
    assert s.get(b"Sb") is None
    assert list(s.scan(b"S")) == [(b"Sa", b"1'"), (b"Sc", b"3")]
    assert s.changelog_offset() == 7


def test_apply_honours_order_of_repeated_keys_in_one_batch(make_store: Factory) -> None:
    s = make_store()
    s.apply([(b"Sa", b"1"), (b"Sa", None), (b"Sb", None), (b"Sb", b"2"), (b"Sc", b"x"), (b"Sc", b"y")], 6)
    assert list(s.scan(b"S")) == [(b"Sb", b"2"), (b"Sc", b"y")]


def test_apply_is_all_or_nothing(make_store: Factory) -> None:
    s = make_store()
    s.apply([(b"Sa", b"1")], 1)
    with pytest.raises(ValueError):
        s.apply([(b"Sb", b"2"), (b"S" + b"x" * 600, b"too long")], 2)
    assert s.get(b"Sb") is None
    assert s.changelog_offset() == 1


def test_an_apply_larger_than_a_transaction_chunk_goes_in_chunks_with_the_offset_in_the_last(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LMDB keeps the pages a write transaction dirtied for good (24 MB after one of 50,000 puts),
    so a big apply goes in chunks; the offset comes last, so a crash between them leaves the old
    one and the restore applies the changelog from there again."""
    monkeypatch.setattr(store_module, "APPLY_CHUNK", 3)
    s = PartitionStore.open(tmp_path / "p0")
    env = s._env
    transactions: list[bool] = []

    class Counting:
        def begin(self, write: bool = False, **kw: Any) -> Any:
            transactions.append(write)
            return env.begin(write=write, **kw)

        def __getattr__(self, name: str) -> Any:
            return getattr(env, name)
    s._env = Counting()  # type: ignore[assignment]
    try:
        s.apply([(f"S{i}".encode(), b"v") for i in range(10)], 10)
        assert transactions.count(True) == 4, "3 + 3 + 3 + 1 writes"
        assert s.count() == 10 and s.changelog_offset() == 10
    finally:
        s._env = env
        s.close()


def test_scan_is_by_prefix_ascending_and_honours_start(make_store: Factory) -> None:
    s = make_store()
    timers = [k.timer_key(due, "inv", 0) for due in (30, 10, 20, 40)]
    s.apply([(t, b"") for t in timers] + [(b"Sa", b"s"), (b"U", b"u")], 1)
    assert [k.parse_timer_key(key)[0] for key, _ in s.scan(k.TIMER)] == [10, 20, 30, 40]
    got = [k.parse_timer_key(key)[0] for key, _ in s.scan(k.TIMER, start=k.timer_key(20, "", 0))]
    assert got == [20, 30, 40]
    assert list(s.scan(k.TIMER, start=b"A")) == list(s.scan(k.TIMER))
    assert list(s.scan(k.TIMER, start=b"Z")) == []
    assert s.count(k.TIMER) == 4
    assert s.count() == 6


def test_scan_and_count_of_everything_leave_out_local_bookkeeping(make_store: Factory) -> None:
    s = make_store()
    s.apply([(b"Sa", b"1")], 9)
    assert list(s.scan(b"")) == [(b"Sa", b"1")]
    assert s.count() == 1
    assert s.count(k.LOCAL) == 2  # format and changelog offset
    assert {key for key, _ in s.scan(k.LOCAL)} == {FORMAT_KEY, k.local_key("changelog-offset")}


def test_scan_reads_a_snapshot_taken_when_it_is_called(make_store: Factory) -> None:
    s = make_store()
    s.apply([(b"Sa", b"1"), (b"Sb", b"2")], 1)
    it = s.scan(b"S")
    s.apply([(b"Sa", None), (b"Sc", b"3"), (b"Sb", b"2'")], 2)
    assert list(it) == [(b"Sa", b"1"), (b"Sb", b"2")]
    assert list(s.scan(b"S")) == [(b"Sb", b"2'"), (b"Sc", b"3")]


def test_clear_deletes_everything_and_resets_the_offset(make_store: Factory) -> None:
    s = make_store()
    s.apply([(b"Sa", b"1"), (b"Jx", b"2")], 5)
    s.clear()
    assert s.count() == 0
    assert s.changelog_offset() == 0
    assert s.get(b"Sa") is None
    s.apply([(b"Sb", b"1")], 1)
    assert list(s.scan(b"")) == [(b"Sb", b"1")]


def test_closed_store_refuses_use(make_store: Factory) -> None:
    s = make_store()
    s.close()
    s.close()
    with pytest.raises(StoreClosedError):
        s.get(b"Sa")
    with pytest.raises(StoreClosedError):
        s.apply([], 1)


def test_empty_keys_are_refused(make_store: Factory) -> None:
    s = make_store()
    with pytest.raises(ValueError):
        s.apply([(b"", b"x")], 1)


def test_large_batches_apply_fast(make_store: Factory) -> None:
    s = make_store()
    writes: list[tuple[bytes, bytes | None]] = [(k.journal_key(f"inv-{i % 997}", i), b"v" * 40)
                                                for i in range(50_000)]
    t0 = time.perf_counter()
    s.apply(writes, 50_000)
    s.apply([(key, None) for key, _ in writes[::2]], 50_001)
    elapsed = time.perf_counter() - t0
    assert s.count(k.JOURNAL) == 25_000
    assert elapsed < 5.0, f"75k writes took {elapsed:.2f}s"


def test_lmdb_store_survives_reopen(tmp_path: Path) -> None:
    s = PartitionStore.open(tmp_path / "a" / "b")
    s.apply([(b"Sa", b"1")], 42)
    s.close()
    s = PartitionStore.open(tmp_path / "a" / "b")
    try:
        assert s.get(b"Sa") == b"1"
        assert s.changelog_offset() == 42
    finally:
        s.close()


def test_lmdb_store_of_a_future_format_is_refused_clearly(tmp_path: Path) -> None:
    s = PartitionStore.open(tmp_path)
    s.apply([(FORMAT_KEY, (99).to_bytes(4, "big"))], 1)
    s.close()
    with pytest.raises(StoreFormatError, match="format 99"):
        PartitionStore.open(tmp_path)
