"""Reading what processors left behind: per-key outputs and the state rows in LMDB."""

from __future__ import annotations

from pathlib import Path

import orjson

from processor._serde import JsonSerde
from state import keys
from state.store import PartitionStore
from tests.kafka_support import Record


def counts_by_key(records: list[Record]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        d = orjson.loads(r.value or b"")
        out.setdefault(d["key"], []).append(d["count"])
    return out


def read_state(state_dir: Path, app: str, obj: str, name: str) -> dict[str, object]:
    """Every key's value of state entry `name` of object `obj`, across all partition stores."""
    values: dict[str, object] = {}
    serde = JsonSerde()
    for part in sorted((state_dir / app).iterdir()):
        if not part.is_dir():
            continue
        store = PartitionStore.open(part)
        try:
            for k, v in store.scan(keys.STATE):
                o, key, n = keys.parse_state_key(k)
                if o == obj and n == name:
                    values[key] = serde.deserialize(v)
        finally:
            store.close()
    return values
