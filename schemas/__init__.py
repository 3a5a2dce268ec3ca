"""Wire formats of the processor's internal records: Avro schemas (``*.avsc``) behind a version byte.

Pure: imports nothing of the project. ``encode(name, record)`` writes the current version of a
schema; ``decode(name, data)`` reads any version this build knows, resolved to the current one.
"""

from __future__ import annotations

from processor.schemas._codec import CURRENT_VERSIONS, SchemaError, decode, encode
from processor.schemas._journal import encode_journal_entry

__all__ = ["CURRENT_VERSIONS", "SchemaError", "decode", "encode", "encode_journal_entry"]
