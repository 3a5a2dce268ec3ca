from __future__ import annotations

import pytest

from processor._engine import routing

# Values from Kafka's own UtilsTest (murmur2 of these strings, as signed ints) and the partitions the
# Java default partitioner gives them.
JAVA = [("21", -973932308), ("foobar", -790332482), ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829), ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                                                       -58897971), ("abc", 479470107)]


@pytest.mark.parametrize(("key", "signed"), JAVA)
def test_murmur2_matches_kafkas_java_implementation(key: str, signed: int) -> None:
    assert routing.murmur2(key.encode()) == signed & 0xFFFFFFFF


def test_invocation_ids_carry_their_partition_and_are_deterministic() -> None:
    a = routing.invocation_id(3, "call", "inv-1-x", "4")
    assert a == routing.invocation_id(3, "call", "inv-1-x", "4")
    assert a != routing.invocation_id(3, "call", "inv-1-x", "5")
    assert routing.partition_of(a) == 3
    with pytest.raises(ValueError):
        routing.partition_of("awk-nope")


def test_awakeable_ids_round_trip() -> None:
    inv = routing.invocation_id(7, "x")
    assert routing.parse_awakeable_id(routing.awakeable_id(inv, 12)) == (inv, 12)
    with pytest.raises(ValueError):
        routing.parse_awakeable_id("awk-garbage")
