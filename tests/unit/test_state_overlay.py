from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.state.memory import MemoryStore
from processor.state.overlay import MISSING, Overlay, OverlayError, PartitionState
from processor.state.store import PartitionStore, Store


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else PartitionStore.open(tmp_path)
    yield s
    s.close()


def test_overlay_keeps_the_last_write_per_key_in_first_write_order() -> None:
    o = Overlay()
    o.put(b"Sb", b"1")
    o.put(b"Sa", b"2")
    o.delete(b"Sb")
    o.put(b"Sa", b"3")
    assert list(o.items()) == [(b"Sb", None), (b"Sa", b"3")]
    assert len(o) == 2
    assert o.lookup(b"Sa") == b"3"
    assert o.lookup(b"Sb") is None
    assert o.lookup(b"Sc") is MISSING


def test_overlay_refuses_bad_keys_at_write_time_not_at_apply_time() -> None:
    with pytest.raises(ValueError):
        Overlay().put(b"S" + b"x" * 600, b"v")
    with pytest.raises(ValueError):
        Overlay().delete(b"")


def test_reads_see_open_then_sealed_newest_first_then_the_store(store: Store) -> None:
    store.apply([(b"Sa", b"store"), (b"Sb", b"store"), (b"Sc", b"store"), (b"Sd", b"store")], 1)
    ps = PartitionState(store)
    ps.put(b"Sa", b"old-sealed")
    ps.put(b"Sb", b"old-sealed")
    ps.seal()
    ps.put(b"Sa", b"new-sealed")
    ps.delete(b"Sc")
    ps.seal()
    ps.put(b"Sa", b"open")
    assert ps.get(b"Sa") == b"open"
    assert ps.get(b"Sb") == b"old-sealed"
    assert ps.get(b"Sc") is None
    assert ps.get(b"Sd") == b"store"
    assert ps.get(b"Se") is None


def test_a_delete_in_a_newer_layer_hides_the_key_and_a_newer_put_revives_it(store: Store) -> None:
    store.apply([(b"Sa", b"store")], 1)
    ps = PartitionState(store)
    ps.delete(b"Sa")
    ps.seal()
    assert ps.get(b"Sa") is None
    assert list(ps.scan(b"S")) == []
    ps.put(b"Sa", b"again")
    assert ps.get(b"Sa") == b"again"
    assert list(ps.scan(b"S")) == [(b"Sa", b"again")]


def test_scan_merges_every_layer_in_key_order_hiding_deletes(store: Store) -> None:
    store.apply([(b"S1", b"st"), (b"S3", b"st"), (b"S5", b"st"), (b"S7", b"st"), (b"T0", b"other")], 1)
    ps = PartitionState(store)
    ps.put(b"S2", b"old")
    ps.delete(b"S3")
    ps.put(b"S5", b"old")
    ps.seal()
    ps.put(b"S3", b"mid")  # revives S3 over the older delete
    ps.delete(b"S5")
    ps.put(b"S6", b"mid")
    ps.seal()
    ps.put(b"S6", b"open")
    ps.delete(b"S7")
    ps.put(b"S8", b"open")
    ps.delete(b"S9")  # delete of a key that exists nowhere
    assert list(ps.scan(b"S")) == [
        (b"S1", b"st"), (b"S2", b"old"), (b"S3", b"mid"), (b"S6", b"open"), (b"S8", b"open")]
    assert list(ps.scan(b"S", start=b"S4")) == [(b"S6", b"open"), (b"S8", b"open")]
    assert list(ps.scan(b"T")) == [(b"T0", b"other")]


def test_scan_tolerates_writes_while_iterating(store: Store) -> None:
    store.apply([(b"S1", b"a"), (b"S2", b"b")], 1)
    ps = PartitionState(store)
    ps.put(b"S3", b"c")
    seen = []
    for key, _ in ps.scan(b"S"):
        seen.append(key)
        ps.delete(key)
        ps.put(b"S0", b"new")
    assert seen == [b"S1", b"S2", b"S3"]
    assert list(ps.scan(b"S")) == [(b"S0", b"new")]


def test_applied_writes_the_oldest_sealed_layer_with_its_offset(store: Store) -> None:
    ps = PartitionState(store)
    ps.put(b"Sa", b"1")
    first = ps.seal()
    ps.put(b"Sb", b"2")
    second = ps.seal()
    ps.put(b"Sc", b"3")
    assert ps.dirty()
    assert ps.sealed() == 2
    with pytest.raises(OverlayError):
        ps.applied(second, 10)
    ps.applied(first, 10)
    assert store.get(b"Sa") == b"1"
    assert store.get(b"Sb") is None
    assert store.changelog_offset() == 10
    assert ps.get(b"Sb") == b"2"
    ps.applied(second, 20)
    assert ps.sealed() == 0
    assert store.changelog_offset() == 20
    assert list(store.scan(b"S")) == [(b"Sa", b"1"), (b"Sb", b"2")]
    assert ps.get(b"Sc") == b"3"
    assert store.get(b"Sc") is None


def test_a_sealed_overlay_refuses_writes(store: Store) -> None:
    ps = PartitionState(store)
    ps.put(b"Sa", b"1")
    sealed = ps.seal()
    assert sealed.sealed
    with pytest.raises(OverlayError):
        sealed.put(b"Sb", b"2")
    assert not ps.dirty()


def test_discard_drops_open_and_sealed_layers(store: Store) -> None:
    store.apply([(b"Sa", b"store")], 1)
    ps = PartitionState(store)
    ps.put(b"Sa", b"sealed")
    sealed = ps.seal()
    ps.delete(b"Sa")
    ps.put(b"Sb", b"open")
    ps.discard()
    assert not ps.dirty()
    assert ps.get(b"Sa") == b"store"
    assert list(ps.scan(b"S")) == [(b"Sa", b"store")]
    with pytest.raises(OverlayError):
        ps.applied(sealed, 2)
    assert store.changelog_offset() == 1


def test_overlay_scan_sees_keys_added_after_a_previous_scan(store: Store) -> None:
    ps = PartitionState(store)
    for i in range(0, 100, 2):
        ps.put(b"S%03d" % i, b"x")
    assert len(list(ps.scan(b"S"))) == 50
    for i in range(1, 100, 2):
        ps.put(b"S%03d" % i, b"y")
    assert [key for key, _ in ps.scan(b"S")] == [b"S%03d" % i for i in range(100)]


def test_a_scan_sorts_only_its_own_namespace() -> None:
    """Finishing invocations scan for subscribers while a cycle's journal and state keys pile up: if
    every such scan sorted the whole overlay, a cycle would cost time quadratic in its size."""
    ov = Overlay()
    for i in range(1000):
        ov.put(b"J" + i.to_bytes(4, "big"), b"x")
        assert ov.keys_in(b"R") == []
    assert len(ov._new[b"J"]) == 1000, "the journal keys were sorted by scans of another namespace"
    ov.put(b"R1", b"")
    assert ov.keys_in(b"R") == [b"R1"]
    assert ov.keys_in(b"J", b"J" + (998).to_bytes(4, "big")) == [b"J" + (998).to_bytes(4, "big"),
                                                                b"J" + (999).to_bytes(4, "big")]
    assert ov.keys_in(b"")[:1] == [b"J" + (0).to_bytes(4, "big")] and ov.keys_in(b"")[-1] == b"R1"


@pytest.mark.parametrize("via", ["applied", "forget"])
def test_cached_store_reads_follow_the_overlays_the_store_takes(store: Store, via: str) -> None:
    """Store reads are cached (an LMDB read releases the GIL); the cache must change exactly when the
    store does — by this state's sealed overlays — and never show an uncommitted write."""
    store.apply([(b"Sa", b"1"), (b"Sb", b"1")], 1)
    st = PartitionState(store)
    assert st.get(b"Sa") == b"1" and st.get(b"Sb") == b"1" and st.get(b"Sc") is None  # now cached
    st.put(b"Sa", b"2")
    st.delete(b"Sb")
    st.put(b"Sc", b"2")
    sealed = st.seal()
    if via == "applied":
        st.applied(sealed, 2)
    else:
        store.apply(sealed.items(), 2)  # the commit thread's apply, then forget on the loop
        st.forget(sealed)
    assert (st.get(b"Sa"), st.get(b"Sb"), st.get(b"Sc")) == (b"2", None, b"2")
    st.put(b"Sa", b"3")
    st.discard()  # an aborted cycle: the cache still holds what the store holds
    assert st.get(b"Sa") == b"2"


def test_the_read_cache_is_bounded_in_entries_and_bytes(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import processor.state.overlay as overlay_module
    monkeypatch.setattr(overlay_module, "CACHE_MAX", 8)
    st = PartitionState(store)
    for i in range(100):
        assert st.get(b"S%d" % i) is None
    assert len(st._cache) <= 8
    monkeypatch.setattr(overlay_module, "CACHE_MAX", 1000)
    monkeypatch.setattr(overlay_module, "CACHE_BYTES", 10_000)
    store.apply([(b"S%03d" % i, b"v" * 1000) for i in range(50)], store.changelog_offset() + 1)
    st = PartitionState(store)
    for i in range(50):
        assert st.get(b"S%03d" % i) == b"v" * 1000
    assert len(st._cache) <= 11 and st._cache_bytes <= 11 * 1004
