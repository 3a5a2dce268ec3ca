"""Records that can never be processed go to `<app>.dlq` with their reason, committed with their
offset, while the records around them are processed in order: nothing stalls, nothing is dropped."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from processor import schemas
from tests.e2e.conftest import Spawner
from tests.kafka_support import Kafka, Record, wait_until

pytestmark = pytest.mark.e2e

PART = 1  # every record goes to partition 1 explicitly, so its DLQ headers must say 1, not 0
KEY = b"k1"  # owned by partition 1 (murmur2), as is b"\xff\xfek": nothing here is forwarded


def _headers(r: Record) -> dict[str, str]:
    return {k: v.decode() for k, v in r.headers}


def _good(n: int) -> tuple[bytes, bytes]:
    return KEY, orjson.dumps({"n": n})


def test_poison_records_go_to_the_dlq_with_their_reason_while_later_records_flow_in_order(
        kafka: Kafka, spawn: Spawner, tmp_path: Path) -> None:
    name = kafka.unique("poison")
    inp, out = kafka.create_topic(f"{name}-in", 2), kafka.create_topic(f"{name}-out", 2)
    dlq, inbox = f"{name}.dlq", f"{name}.inbox"
    proc = spawn("tests.apps.poison:app", {"POISON_APP": name, "POISON_INPUT": inp,
                                           "POISON_OUTPUT": out}).start().wait_ready()
    bad = {  # offset in partition PART -> (key, value, error class, words the reason must contain)
        1: (KEY, b'{"n": 2', "SerdeError", "JSON"),
        2: (None, orjson.dumps({"n": 2}), "MissingKey", "no key"),
        3: (KEY, None, "MissingValue", "tombstone"),
        4: (b"\xff\xfek", orjson.dumps({"n": 2}), "InvalidKey", "UTF-8"),
    }
    records = [_good(1), *[(k, v) for k, v, _, _ in bad.values()], _good(2), _good(3), _good(4)]
    kafka.produce(inp, records, partition=PART)

    wait_until(lambda: len(kafka.drain(out)) >= 4, 60, "the four good records to be processed")
    assert [orjson.loads(r.value or b"") for r in kafka.drain(out)] == [
        {"key": KEY.decode(), "n": n} for n in (1, 2, 3, 4)]
    wait_until(lambda: len(kafka.drain(dlq)) >= len(bad), 30, "the poison records in the DLQ")

    # Inbox commands that address nothing in this app, and one that is not a command at all.
    unknown = schemas.encode("InboxCommand", {"kind": "invoke", "service": "nosuch", "handler": "h",
                                              "key": "k", "payload": b"{}"})
    kafka.produce(inbox, [(b"k", unknown), (b"k", b"\x01 not avro at all")], partition=PART)
    wait_until(lambda: len(kafka.drain(dlq)) >= len(bad) + 2, 30, "the inbox commands in the DLQ")
    kafka.produce(inp, [_good(5)], partition=PART)  # and the partition still flows afterwards
    wait_until(lambda: len(kafka.drain(out)) >= 5, 30, "a good record after the inbox poison")
    assert proc.stop() == 0

    dead = kafka.drain(dlq)
    assert [(r.partition, _headers(r)["processor.source.topic"], int(_headers(r)["processor.source.offset"]))
            for r in dead] == [(PART, inp, o) for o in bad] + [(PART, inbox, 0), (PART, inbox, 1)]
    for r in dead[:len(bad)]:
        h = _headers(r)
        key, value, error_class, reason = bad[int(h["processor.source.offset"])]
        assert (r.key, r.value) == (key, value), "the DLQ keeps the original record"
        assert h["processor.error.class"] == error_class
        assert reason in h["processor.error"], h["processor.error"]
        assert h["processor.source.partition"] == str(PART)
    cmd, junk = (_headers(r) for r in dead[len(bad):])
    assert cmd["processor.error.class"] == "UnknownHandler"
    assert "nosuch/h" in cmd["processor.error"] and name in cmd["processor.error"]
    assert dead[len(bad)].value == unknown
    assert junk["processor.error.class"] == "SchemaError"
    assert "undecodable inbox command" in junk["processor.error"]
    assert [orjson.loads(r.value or b"")["n"] for r in kafka.drain(out)] == [1, 2, 3, 4, 5]
