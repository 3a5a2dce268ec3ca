"""Kafka client settings from the user: security (TLS, SASL) and tuning for every client the engine,
the CLI and ``p.Client`` create (docs/security.md).

Three sources, later ones winning key by key:

1. code: ``App(..., kafka_config={...})`` / ``Client(..., kafka_config={...})``;
2. a file: ``processor run --kafka-config FILE`` (or ``$PROCESSOR_KAFKA_CONFIG_FILE``, which the
   Client reads too), Java-properties syntax (``key=value``), as managed Kafka services hand out;
3. the environment: ``PROCESSOR_KAFKA_<SETTING>``, ``_`` read as ``.`` (``__`` as ``_``), e.g.
   ``PROCESSOR_KAFKA_SASL_MECHANISM=SCRAM-SHA-512``.

Settings the engine's guarantees rest on (``ENGINE_OWNED``) are refused from every source. Secret
values (``is_secret``) never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from processor._errors import ConfigurationError

ENV_PREFIX = "PROCESSOR_KAFKA_"
FILE_ENV = "PROCESSOR_KAFKA_CONFIG_FILE"
REDACTED = "[redacted]"

# What the engine sets itself, and why a user may not.
ENGINE_OWNED: Mapping[str, str] = MappingProxyType({
    "bootstrap.servers": "pass it as --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS (Client: its first argument)",
    "transactional.id": "derived from the app name and instance id; fencing depends on it",
    "transaction.timeout.ms": "set App(transaction_timeout=timedelta(...))",
    "enable.idempotence": "exactly-once needs idempotent producers",
    "acks": "exactly-once needs acks=all",
    "isolation.level": "the engine reads read_committed",
    "enable.auto.commit": "offsets commit inside the engine's transactions",
    "enable.auto.offset.store": "offsets commit inside the engine's transactions",
    "auto.offset.reset": "the engine sets where a new group starts",
    "group.id": "the consumer group is the app name",
    "group.instance.id": "the instance id (--instance-id) is the static member id",
    "group.protocol": "co-partitioning needs the classic protocol with the range assignor",
    "group.remote.assignor": "co-partitioning needs the range assignor",
    "partition.assignment.strategy": "co-partitioning needs the range assignor",
    "partitioner": "keys must land where Kafka's Java client puts them (murmur2_random)",
    "logger": "librdkafka's log lines go through Python logging (logger 'processor.librdkafka')",
    "error_cb": "the engine handles client errors",
    "on_delivery": "the engine handles delivery reports",
    "on_commit": "the engine commits in transactions",
    "allow.auto.create.topics": "no topic is ever created by a produce or a lookup (declare outputs with app.output)",
})

# Java client settings that librdkafka does not know, with what to use instead.
_JAVA_ONLY: Mapping[str, str] = MappingProxyType({
    "sasl.jaas.config": "set sasl.username and sasl.password",
    "ssl.truststore.location": "set ssl.ca.location to a PEM file of the CA",
    "ssl.truststore.password": "set ssl.ca.location to a PEM file of the CA",
    "ssl.truststore.type": "set ssl.ca.location to a PEM file of the CA",
})

_SECRET = re.compile(r"password|secret|jaas|token|(^|\.)key\.pem$|^ssl_key$|oauthbearer\.config$|credentials")


def is_secret(key: str) -> bool:
    """Whether the value of setting `key` must never be shown (passwords, keys, tokens)."""
    return bool(_SECRET.search(key.lower()))


def redact(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` with every secret value replaced by ``[redacted]``."""
    return {k: REDACTED if is_secret(k) else v for k, v in settings.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaConfig:
    """User settings for Kafka clients, merged from their sources; ``origins`` says where each came
    from. Its repr shows no secret."""

    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    origins: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __repr__(self) -> str:
        return f"KafkaConfig({self.describe() or 'no settings'})"

    def describe(self) -> str:
        """``key=value, ... (from origin); ...`` with secrets redacted: safe to log."""
        shown = redact(self.settings)
        groups: dict[str, list[str]] = {}
        for k in sorted(shown):
            origin = self.origins.get(k, "?")
            groups.setdefault("the environment" if origin.startswith("env ") else origin, []).append(f"{k}={shown[k]}")
        return "; ".join(f"{', '.join(items)} (from {origin})" for origin, items in groups.items())

    def merged(self, other: KafkaConfig) -> KafkaConfig:
        """These settings overridden key by key by `other`'s."""
        return KafkaConfig(settings=MappingProxyType({**self.settings, **other.settings}),
                           origins=MappingProxyType({**self.origins, **other.origins}))


def from_code(settings: Mapping[str, Any] | None, origin: str) -> KafkaConfig:
    """Settings passed in code (``App``/``Client`` ``kafka_config=``), checked."""
    out = dict(settings or {})
    for k, v in out.items():
        if not isinstance(k, str):
            raise ConfigurationError(f"{origin}: setting names must be strings, got {k!r}")
        if isinstance(v, Mapping | list | tuple | set) or v is None:
            raise ConfigurationError(f"{origin}: {k} must be a string, number or boolean, "
                                     f"not {type(v).__name__}")
    return _checked(out, dict.fromkeys(out, origin))


def from_file(path: str | Path) -> KafkaConfig:
    """Settings from a properties file: ``key=value`` (or ``key: value``) lines; ``#`` and ``!``
    start comments. Values are taken as written (librdkafka parses them)."""
    p = Path(path)
    origin = f"file {p}"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigurationError(f"cannot read the Kafka config file {p}: {e.strerror or e}") from None
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        m = re.match(r"([^=:\s]+)\s*[=:]\s*(.*)$", line)
        if m is None:
            raise ConfigurationError(f"{origin}, line {n}: expected key=value")
        if line.endswith("\\"):
            raise ConfigurationError(f"{origin}, line {n}: continued lines are not supported")
        out[m.group(1)] = m.group(2)
    return _checked(out, dict.fromkeys(out, origin))


def from_environ(environ: Mapping[str, str]) -> KafkaConfig:
    """Settings from ``PROCESSOR_KAFKA_<SETTING>`` variables (``_`` is ``.``, ``__`` is ``_``)."""
    out: dict[str, str] = {}
    origins: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == FILE_ENV:
            continue
        key = name[len(ENV_PREFIX):].lower().replace("__", "\0").replace("_", ".").replace("\0", "_")
        if key:
            out[key] = value
            origins[key] = f"env {name}"
    return _checked(out, origins)


def resolve(code: KafkaConfig | None = None, *, file: str | Path | None = None,
            environ: Mapping[str, str] | None = None) -> KafkaConfig:
    """Code settings, overridden by the file's, overridden by the environment's. `file` defaults to
    ``$PROCESSOR_KAFKA_CONFIG_FILE``; `environ` to ``os.environ``."""
    env = os.environ if environ is None else environ
    config = code or KafkaConfig()
    path = file if file is not None else env.get(FILE_ENV) or None
    if path is not None:
        config = config.merged(from_file(path))
    return config.merged(from_environ(env))


def _checked(settings: dict[str, Any], origins: dict[str, str]) -> KafkaConfig:
    for k in settings:
        where = origins[k]
        why = ENGINE_OWNED.get(k)
        if why is not None:
            raise ConfigurationError(f"{where}: the Kafka setting {k!r} is the processor's own and cannot be "
                                     f"set: {why}")
        if k in _JAVA_ONLY:
            raise ConfigurationError(f"{where}: {k!r} is a Java client setting; librdkafka does not know it "
                                     f"({_JAVA_ONLY[k]})")
    return KafkaConfig(settings=MappingProxyType(dict(settings)), origins=MappingProxyType(origins))
