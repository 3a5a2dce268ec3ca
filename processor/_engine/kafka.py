"""The Kafka edge: client configs, topic checks/creation and co-partitioning checks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from processor._app import App
from processor._errors import ConfigurationError
from processor._kafka_config import KafkaConfig, redact
from processor._logs import KAFKA_LOG

log = logging.getLogger("processor.kafka")

REGISTRY_CONFIG = {"cleanup.policy": "compact,delete", "retention.ms": str(7 * 24 * 3600 * 1000),
                   "segment.ms": str(600_000), "min.compaction.lag.ms": "0"}


def registry_topic(app: str) -> str:
    """App `app`'s instance registry: one partition, compacted (processor/_admin/registry.py)."""
    return f"{app}.instances"

# The cluster refuses who we are (SASL) or we refuse it (TLS): retrying cannot help.
UNAUTHENTICATED = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL})
# The principal lacks an ACL for what it asked.
UNAUTHORIZED = frozenset({KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
                          KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                          KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED})


def client_config(bootstrap: str, user: KafkaConfig | None = None) -> dict[str, Any]:
    """What every client of the processor starts from: the bootstrap servers, the user's settings
    (security, tuning) and the rate-limited librdkafka logger."""
    # A produce to, or a metadata lookup of, a missing topic never creates it (producers and admin
    # clients default to asking the broker to): inputs and declared outputs are checked at start
    # (``ensure_topics``), an emit to any other topic is checked by ``KnownTopics``.
    return {"bootstrap.servers": bootstrap, **(user.settings if user else {}), "logger": KAFKA_LOG,
            "allow.auto.create.topics": False}


def base_config(base: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {**base, **(extra or {})}


def producer_config(base: Mapping[str, Any], app: App, transactional_id: str,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return base_config(base, {
        "transactional.id": transactional_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 1,
        "partitioner": "murmur2_random",  # Java-compatible: a key's records share a partition number
        "transaction.timeout.ms": app.config.transaction_timeout_ms,
        **(extra or {})})


def consumer_config(base: Mapping[str, Any], app: App, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return base_config(base, {
        "group.id": app.name,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range",  # co-partitioning: partition p of every topic together
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "max.poll.interval.ms": 600_000,
        "queued.max.messages.kbytes": 16384,  # prefetch bound (default 64 MiB)
        **(extra or {})})


def connect(config: Mapping[str, Any], timeout: float = 15.0) -> AdminClient:
    """An admin client that has reached the cluster. A refused login or TLS handshake fails at once,
    with the broker's reason, instead of being retried until `timeout` (librdkafka retries it
    several times a second); so does a cluster that cannot be reached within `timeout`."""
    bootstrap = config["bootstrap.servers"]
    refused: list[KafkaError] = []

    def on_error(err: KafkaError) -> None:
        if err.code() in UNAUTHENTICATED:
            refused.append(err)

    try:
        admin = AdminClient({**config, "error_cb": on_error})  # type: ignore[dict-item]  # stubs: values only
    except KafkaException as e:
        raise ConfigurationError(f"invalid Kafka client settings: {_safe(e.args[0], config)}") from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            return admin
        except KafkaException as e:
            last = e.args[0]
        admin.poll(0)  # serves error_cb (and the log lines of this client)
        if refused:
            raise ConfigurationError(refusal(refused[0], bootstrap))
        if time.monotonic() >= deadline:
            raise ConfigurationError(f"cannot reach Kafka at {bootstrap} within {timeout:.0f}s: {last}")


def refusal(err: KafkaError, bootstrap: str) -> str:
    """One line saying why the cluster at `bootstrap` will not talk to us."""
    what = "the TLS handshake failed" if err.code() == KafkaError._SSL else "authentication failed"
    return (f"Kafka at {bootstrap} refused the connection: {what} ({err.str()}); check the security "
            "settings (docs/security.md)")


def not_authorized(reason: str, doing: str) -> str:
    """One line for an ACL the principal lacks (or a login the cluster no longer accepts)."""
    return (f"Kafka refused {doing}: {reason}; the app's principal lacks an ACL or its login is refused "
            "(docs/security.md lists the ACLs an app needs)")


def is_refusal(code: int | None) -> bool:
    """Whether error `code` says the cluster refuses us (login, TLS or an ACL): retrying cannot help."""
    return code in UNAUTHENTICATED or code in UNAUTHORIZED


def _safe(err: Any, config: Mapping[str, Any]) -> str:
    """An error text with any secret value of `config` blanked out."""
    text = str(err)
    for k, v in config.items():
        if redact({k: v})[k] != v and isinstance(v, str) and v:
            text = text.replace(v, "[redacted]")
    return text


def ensure_topics(admin: AdminClient, app: App, *, timeout: float = 30.0) -> int:
    """Check the input topics exist with one partition count P, create missing internal topics with P
    partitions, and refuse (ConfigurationError) when any count differs. Returns P."""
    md = admin.list_topics(timeout=timeout)
    counts: dict[str, int] = {}
    for t in app.bindings:
        tm = md.topics.get(t)
        if tm is None or tm.error is not None:
            raise ConfigurationError(f"input topic {t!r} does not exist (or the app's principal may not "
                                     f"Describe it); create it (all inputs of app {app.name!r} need the same "
                                     "partition count)")
        counts[t] = len(tm.partitions)
    if counts:
        p = next(iter(counts.values()))
    elif app.config.partitions is not None:
        p = app.config.partitions
    else:
        raise ConfigurationError(f"app {app.name!r} has no input topic; pass App(..., partitions=N)")
    internal = {app.inbox_topic: {}, app.dlq_topic: {}, app.results_topic: {"retention.ms": str(24 * 3600 * 1000)},
                app.changelog_topic: {"cleanup.policy": "compact", "min.compaction.lag.ms": "0",
                                      "segment.ms": "3600000"},
                # read back only from the last cycle that absorbed them: a week covers any outage
                app.steps_topic: {"retention.ms": str(7 * 24 * 3600 * 1000), "segment.ms": "3600000"}}
    missing = []
    for out in app.outputs.values():
        tm = md.topics.get(out.topic)
        if tm is not None and tm.error is None:
            continue
        if out.partitions is None:
            raise ConfigurationError(f"output topic {out.topic!r} does not exist (or the app's principal may not "
                                     f"Describe it); create it, or declare app.output({out.topic!r}, partitions=N) "
                                     "to have it created")
        missing.append(NewTopic(out.topic, num_partitions=out.partitions, replication_factor=-1,
                                config=dict(out.config)))
    # The instance registry (processor/_admin/registry.py) has one partition and is never consumed by
    # the engine: co-partitioning does not apply to it.
    registry = registry_topic(app.name)
    if (tm := md.topics.get(registry)) is None or tm.error is not None:
        missing.append(NewTopic(registry, num_partitions=1, replication_factor=-1, config=REGISTRY_CONFIG))
    for t, cfg in internal.items():
        tm = md.topics.get(t)
        if tm is None or tm.error is not None:
            missing.append(NewTopic(t, num_partitions=p, replication_factor=-1, config=cfg))
        else:
            counts[t] = len(tm.partitions)
    bad = {t: n for t, n in counts.items() if n != p}
    if bad:
        raise ConfigurationError(
            f"app {app.name!r} needs every input and internal topic to have the same partition count "
            f"(co-partitioning); found {dict(sorted(counts.items()))}")
    if missing:
        for t, f in admin.create_topics(missing, operation_timeout=timeout, request_timeout=timeout).items():
            try:
                f.result(timeout=timeout)
                log.info("created topic %s with %d partition(s)", t,
                         1 if t == registry else app.outputs[t].partitions if t in app.outputs else p)
            except KafkaException as e:
                if e.args[0].code() != 36:  # TOPIC_ALREADY_EXISTS: another instance won the race
                    raise ConfigurationError(f"cannot create topic {t}: {e.args[0]}") from None
        wait_for_leaders(admin, [t.topic for t in missing], timeout=timeout)
    return p


class KnownTopics:
    """The topics handlers may emit to: those that existed when the instance started and any found
    since. ``check`` of another starts a lookup in the background (at most one per topic, and
    `max_lookups` at a time) and answers False, so the emit fails its attempt with UnknownTopicError and
    a retry finds a topic created meanwhile. Nothing here creates a topic."""

    def __init__(self, names: Iterable[str], lookup: Callable[[str], bool], *, max_lookups: int = 4) -> None:
        self._names = set(names)
        self._lookup = lookup
        self._looking: set[str] = set()
        self._max = max_lookups
        self._lock = threading.Lock()

    def check(self, topic: str) -> bool:
        if topic in self._names:
            return True
        with self._lock:
            if topic in self._looking or len(self._looking) >= self._max:
                return False
            self._looking.add(topic)
        threading.Thread(target=self._look, args=(topic,), name=f"topic-lookup-{topic}"[:32], daemon=True).start()
        return False

    def _look(self, topic: str) -> None:
        try:
            found = self._lookup(topic)
        except Exception:  # an unreachable broker: the next attempt looks again
            log.debug("looking up topic %s failed", topic, exc_info=True)
            found = False
        with self._lock:
            self._looking.discard(topic)
            if found:
                self._names.add(topic)
        if not found:
            log.warning("handlers emit to topic %s, which does not exist: the invocations retry until it is "
                        "created (or declare it with app.output(%r, partitions=N))", topic, topic)


def known_topics(admin: AdminClient, *, timeout: float = 10.0) -> KnownTopics:
    """Every topic of the cluster now, looking up others on demand with `admin`."""
    def exists(topic: str) -> bool:
        tm = admin.list_topics(topic=topic, timeout=timeout).topics.get(topic)
        if tm is None:
            return False
        # A topic the principal may not Describe (no ACL) is not ours to call missing: the produce
        # reports the refusal, which stops the processor with its reason (docs/security.md).
        return tm.error is None or tm.error.code() in UNAUTHORIZED

    return KnownTopics(admin.list_topics(timeout=timeout).topics, exists)


def wait_for_leaders(admin: AdminClient, topics: list[str], *, timeout: float) -> None:
    """Wait until every partition of `topics` has a leader: a just-created topic answers
    NOT_LEADER_OR_FOLLOWER for a moment, which must not reach a restore or the first commit."""
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
        waiting = [t for t in topics if (tm := md.topics.get(t)) is None or tm.error is not None
                   or any(pm.leader < 0 for pm in tm.partitions.values())]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise ConfigurationError(f"topics {waiting} have partitions without a leader after {timeout:.0f}s")
        time.sleep(0.1)


def check_copartitioned(assigned: Iterable[tuple[str, int]], topics: Iterable[str]) -> set[int]:
    """The partition numbers assigned, after checking each comes with every topic's same partition."""
    by_partition: dict[int, set[str]] = {}
    for t, p in assigned:
        by_partition.setdefault(p, set()).add(t)
    want = set(topics)
    broken = {p: sorted(want - got) for p, got in by_partition.items() if got != want}
    if broken:
        raise ConfigurationError(f"assignment breaks co-partitioning: partitions missing topics {broken}; "
                                 "every instance must use the range assignor and the same topics")
    return set(by_partition)


def step_lease_s(consumer: Mapping[str, Any]) -> float:
    """How long after a cycle's seal a committed transaction still proves this member owns its
    partitions: the session timeout less two heartbeat intervals (``PartitionWorker.log_step``)."""
    session = float(consumer.get("session.timeout.ms", 45_000))
    heartbeat = float(consumer.get("heartbeat.interval.ms", 3_000))
    return max(0.0, (session - 2 * heartbeat) / 1000)
