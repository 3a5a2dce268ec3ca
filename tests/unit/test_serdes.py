"""User payload serdes: JSON (default), Avro with a user schema, raw bytes; bad input is a SerdeError."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import processor as p

ORDER = {"type": "record", "name": "Order", "fields": [
    {"name": "id", "type": "string"},
    {"name": "qty", "type": "int"},
    {"name": "note", "type": ["null", "string"], "default": None},
]}


@pytest.mark.parametrize("value", [
    {"id": "o-1", "items": [{"sku": "a", "qty": 2}], "paid": True, "total": 9.5, "note": None},
    [1, "two", 3.0], "text", 0, None, {"unicode": "żółw ✓"},
])
def test_json_round_trips_plain_values(value: Any) -> None:
    serde = p.JsonSerde()
    assert serde.deserialize(serde.serialize(value)) == value


def test_json_writes_dataclasses_as_objects() -> None:
    @dataclasses.dataclass
    class Item:
        sku: str
        qty: int

    serde = p.JsonSerde()
    assert serde.deserialize(serde.serialize(Item("a", 2))) == {"sku": "a", "qty": 2}


@pytest.mark.parametrize("value", [{1, 2}, object(), 2**70, b"raw"])
def test_json_refuses_values_it_cannot_write(value: Any) -> None:
    with pytest.raises(p.SerdeError, match="not JSON-serializable"):
        p.JsonSerde().serialize(value)


@pytest.mark.parametrize("data", [b"", b'{"id": "o-1"', b"\xff\xfe", b"[1,]", b"nan"])
def test_json_rejects_bytes_that_are_not_json(data: bytes) -> None:
    with pytest.raises(p.SerdeError, match="not valid JSON"):
        p.JsonSerde().deserialize(data)


def test_avro_round_trips_a_record_of_its_schema() -> None:
    serde = p.AvroSerde(ORDER)
    value = {"id": "o-1", "qty": 3, "note": "gift"}
    assert serde.deserialize(serde.serialize(value)) == value
    assert serde.deserialize(serde.serialize({"id": "o-2", "qty": 1})) == {"id": "o-2", "qty": 1, "note": None}


@pytest.mark.parametrize(("value", "why"), [
    ({"id": "o-1"}, "qty"),
    ({"id": "o-1", "qty": "three"}, "qty"),
    ({"id": 1, "qty": 1}, "id"),
    ("o-1", "got str"),
    (None, "NoneType"),
])
def test_avro_refuses_values_that_do_not_match_the_schema(value: Any, why: str) -> None:
    with pytest.raises(p.SerdeError, match=f"does not match the Avro schema.*{why}"):
        p.AvroSerde(ORDER).serialize(value)


def test_avro_refuses_a_float_for_an_int_field() -> None:
    with pytest.raises(p.SerdeError):
        p.AvroSerde(ORDER).serialize({"id": "o-1", "qty": 1.5})


def test_avro_rejects_trailing_bytes() -> None:
    serde = p.AvroSerde(ORDER)
    with pytest.raises(p.SerdeError, match="1 trailing bytes"):
        serde.deserialize(serde.serialize({"id": "o-1", "qty": 3}) + b"\x00")


@pytest.mark.parametrize("data", [b"", b"\x02a", b"\xff" * 11])
def test_avro_rejects_bytes_that_are_not_a_record(data: bytes) -> None:
    with pytest.raises(p.SerdeError, match="not a record of the Avro schema"):
        p.AvroSerde(ORDER).deserialize(data)


def test_avro_says_why_a_truncated_record_is_rejected() -> None:
    with pytest.raises(p.SerdeError, match=r"not a record of the Avro schema: \S"):
        p.AvroSerde(ORDER).deserialize(b"\x06o-1")


def test_avro_refuses_an_invalid_schema_when_built() -> None:
    with pytest.raises(Exception, match="integer"):  # fastavro's UnknownType names the bad type
        p.AvroSerde({"type": "record", "name": "Bad", "fields": [{"name": "qty", "type": "integer"}]})


@pytest.mark.parametrize("value", [b"", b"\x00\xff raw", bytearray(b"ba"), memoryview(b"mv")])
def test_bytes_round_trip_unchanged(value: bytes) -> None:
    serde = p.BytesSerde()
    out = serde.serialize(value)
    assert type(out) is bytes and out == bytes(value)
    assert serde.deserialize(out) == bytes(value)


@pytest.mark.parametrize("value", ["text", 1, None, [1]])
def test_bytes_refuses_anything_but_bytes(value: Any) -> None:
    with pytest.raises(p.SerdeError, match="BytesSerde needs bytes"):
        p.BytesSerde().serialize(value)

