"""Serdes turn user values into record bytes and back: JSON (orjson, the default), Avro, raw bytes."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

import fastavro
import fastavro.validation
import orjson

from processor._errors import SerdeError

T = TypeVar("T")


class Serde(Protocol[T]):
    """Encodes values of one type to bytes and back. Raise SerdeError (or any exception) on bad input."""

    def serialize(self, value: T) -> bytes: ...

    def deserialize(self, data: bytes) -> T: ...


class JsonSerde:
    """JSON via orjson: dicts, lists, str, int, float, bool, None, dataclasses, datetimes."""

    def serialize(self, value: Any) -> bytes:
        try:
            return orjson.dumps(value)
        except TypeError as e:
            raise SerdeError(f"value is not JSON-serializable: {e}") from e

    def deserialize(self, data: bytes) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise SerdeError(f"not valid JSON: {e}") from e


class BytesSerde:
    """Raw bytes in, raw bytes out."""

    def serialize(self, value: bytes) -> bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise SerdeError(f"BytesSerde needs bytes, got {type(value).__name__}")
        return bytes(value)

    def deserialize(self, data: bytes) -> bytes:
        return data


class AvroSerde:
    """Avro binary (schemaless) with a user schema, via fastavro."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._schema = fastavro.parse_schema(dict(schema))
        self._record = schema.get("name") if schema.get("type") == "record" else None

    def serialize(self, value: Any) -> bytes:
        out = io.BytesIO()
        try:
            if self._record is not None and not isinstance(value, Mapping):
                raise SerdeError(f"value does not match the Avro schema: expected a {self._record} "
                                 f"record (a mapping), got {type(value).__name__}")
            fastavro.validation.validate(value, self._schema, raise_errors=True)
            fastavro.schemaless_writer(out, self._schema, value)
        except fastavro.validation.ValidationError as e:
            why = "; ".join(str(x)[:200] for x in e.errors)
            raise SerdeError(f"value does not match the Avro schema: {why}") from e
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise SerdeError(f"value does not match the Avro schema: {e}") from e
        return out.getvalue()

    def deserialize(self, data: bytes) -> Any:
        buf = io.BytesIO(data)
        try:
            value = fastavro.schemaless_reader(buf, self._schema, None)
        except EOFError:
            raise SerdeError(f"not a record of the Avro schema: truncated ({len(data)} bytes)") from None
        except (ValueError, TypeError, IndexError, KeyError, StopIteration) as e:
            raise SerdeError(f"not a record of the Avro schema: {type(e).__name__}: {e}") from e
        if buf.tell() != len(data):
            raise SerdeError(f"{len(data) - buf.tell()} trailing bytes after the Avro record")
        return value
