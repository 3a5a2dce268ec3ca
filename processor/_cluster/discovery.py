"""Finding an app's live instances: the registry topic ``<app>.instances`` says where each instance's
admin endpoint is; the consumer group ``<app>`` says which instances are alive and which partitions
each was assigned. A registry record counts only while its instance is a group member (static
membership: ``group.instance.id`` is the instance id), so a SIGKILLed instance's record is ignored.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from processor._admin.registry import InstanceRecord
from processor._engine import kafka as kio
from processor._errors import ConfigurationError

CLI_READER_GROUP = "processor-cli-"  # the registry reader's group id prefix (a coordinator look-up only)
STALE_BEATS = 3  # without group membership to ask, a record older than 3 heartbeats is stale
_RETRIABLE = frozenset({KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                        KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT, KafkaError._TRANSPORT})


class CliError(Exception):
    """What stops a command: the message for stderr and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


USAGE = 2       # a wrong app, state dir, broker or setting: retrying will not help
INCOMPLETE = 3  # part of the cluster did not answer (rebalancing, an instance unreachable)
NOT_FOUND = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    """One consumer-group member: its static id (the instance id) and the partition numbers it was
    assigned (of ``<app>.inbox``, which every member subscribes to)."""

    instance_id: str
    client_id: str
    host: str
    partitions: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Judged:
    """A registry record and whether to ask its instance."""

    record: InstanceRecord
    live: bool
    why: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    """What Kafka says about an app right now."""

    app: str
    bootstrap: str
    partitions_total: int
    group_state: str | None          # None: the group could not be described (no ACL)
    members: tuple[Member, ...]
    judged: tuple[Judged, ...]

    @property
    def live(self) -> list[InstanceRecord]:
        return [j.record for j in self.judged if j.live]

    def owners(self) -> dict[int, str] | None:
        """Partition → the instance the group assigned it to; None when the group is unknown."""
        if self.group_state is None:
            return None
        return {p: m.instance_id for m in self.members for p in m.partitions}


def judge(records: Iterable[InstanceRecord], members: Iterable[Member] | None, now_ms: int) -> list[Judged]:
    """Which records to believe. With the group's members known: those of members (the rest are left
    by instances that died or stopped without their tombstone). Without: those whose heartbeat is at
    most ``STALE_BEATS`` intervals old."""
    ids = None if members is None else {m.instance_id for m in members}
    out = []
    for r in sorted(records, key=lambda r: r.instance_id):
        age_s = max(0.0, (now_ms - r.heartbeat_ms) / 1000)
        if ids is not None:
            live = r.instance_id in ids
            why = "a member of the consumer group" if live else \
                f"not a member of the consumer group (last heartbeat {age_s:.0f}s ago): stopped or dead"
        else:
            live = age_s <= STALE_BEATS * r.interval_s + 5
            why = f"heartbeat {age_s:.0f}s ago" + ("" if live else ": stale")
        out.append(Judged(record=r, live=live, why=why))
    return out


def admin_client(bootstrap: str, kafka_config: Any, timeout: float) -> tuple[AdminClient, dict[str, Any]]:
    """An admin client that reached the cluster, and the client config it was made from."""
    config = {**kio.client_config(bootstrap, kafka_config), "client.id": "processor-cli"}
    return kio.connect(config, timeout), config


def discover(bootstrap: str, kafka_config: Any, app: str, *, timeout: float,
             reader_group: str = CLI_READER_GROUP) -> Cluster:
    """The app's partition count, group members and judged registry records. CliError (USAGE) for a
    broker that cannot be reached or refuses us, and for an app that does not exist there.
    `reader_group`: the prefix of the registry reader's throwaway group id (its principal needs
    ``Describe`` on groups with that prefix)."""
    try:
        admin, config = admin_client(bootstrap, kafka_config, timeout)
    except ConfigurationError as e:
        raise CliError(str(e), USAGE) from None
    md = admin.list_topics(timeout=timeout)
    inbox = md.topics.get(f"{app}.inbox")
    if inbox is None or inbox.error is not None:
        apps = sorted(t[: -len(".inbox")] for t in md.topics if t.endswith(".inbox"))
        raise CliError(f"no app {app!r} on Kafka at {bootstrap}: its topic {app}.inbox does not exist (or this "
                       f"principal may not Describe it); apps found: {', '.join(apps) or 'none'}", USAGE)
    state, members = describe_group(admin, app, timeout)
    records = read_registry(config, app, timeout, reader_group) if f"{app}.instances" in md.topics else []
    return Cluster(app=app, bootstrap=bootstrap, partitions_total=len(inbox.partitions), group_state=state,
                   members=tuple(members or ()), judged=tuple(judge(records, members, int(time.time() * 1000))))


def describe_group(admin: AdminClient, app: str, timeout: float) -> tuple[str | None, list[Member] | None]:
    """The group's state and members; (None, None) when this principal may not describe it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            d = admin.describe_consumer_groups([app], request_timeout=max(1.0, deadline - time.monotonic()))[app] \
                .result(timeout=max(1.0, deadline - time.monotonic()) + 1)
            break
        except KafkaException as e:
            err = e.args[0]
            if err.code() in kio.UNAUTHORIZED:
                return None, None
            if err.code() not in _RETRIABLE or time.monotonic() >= deadline:
                raise CliError(f"cannot describe consumer group {app!r}: {err.str()}", INCOMPLETE) from None
            time.sleep(0.2)
    members = []
    inbox = f"{app}.inbox"
    for m in d.members:
        tps = m.assignment.topic_partitions if m.assignment is not None else []
        members.append(Member(instance_id=m.group_instance_id or m.client_id, client_id=m.client_id, host=m.host,
                              partitions=tuple(sorted(tp.partition for tp in tps if tp.topic == inbox))))
    return str(getattr(d.state, "name", d.state)).lower(), members


def read_registry(config: Mapping[str, Any], app: str, timeout: float,
                  reader_group: str = CLI_READER_GROUP) -> list[InstanceRecord]:
    """The latest record of each instance on ``<app>.instances`` (tombstones remove one)."""
    topic = f"{app}.instances"
    c = Consumer({**config, "group.id": f"{reader_group}{uuid.uuid4().hex[:12]}", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "enable.partition.eof": True})
    latest: dict[str, InstanceRecord] = {}
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout, cached=False)
        if high <= low:
            return []
        c.assign([TopicPartition(topic, 0, low)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            err, offset = m.error(), m.offset() or 0
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if offset >= high:
                        break
                    continue
                raise CliError(f"cannot read {topic}: {err.str()}", INCOMPLETE)
            key = (m.key() or b"").decode(errors="replace")
            value = m.value()
            if value is None:
                latest.pop(key, None)
            else:
                try:
                    latest[key] = InstanceRecord.decode(value)
                except ValueError:
                    continue
            if offset + 1 >= high:
                break
        else:
            raise CliError(f"cannot read {topic} to its end within {timeout:.0f}s", INCOMPLETE)
    except KafkaException as e:
        raise CliError(f"cannot read {topic}: {e.args[0].str()}", INCOMPLETE) from None
    finally:
        c.close()
    return [r for r in latest.values() if r.app == app]
