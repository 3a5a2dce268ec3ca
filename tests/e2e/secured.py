"""A SASL_SSL broker of the test session's own (deploy/kafka/broker.sh with KAFKA_SECURITY=sasl_ssl),
its users, and the ACLs docs/security.md documents, read from that file."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from tests.kafka_support import BROKER_SH, REPO, Kafka, _warm

SECURITY_DOC = REPO / "docs" / "security.md"
PORT = int(os.environ.get("KAFKA_SASL_PORT", "19792"))


@dataclass(slots=True, kw_only=True)
class SecureKafka(Kafka):
    """The secured broker; `config()` and `admin` act as its super user `admin`."""

    work: Path
    env: dict[str, str]
    security: dict[str, str] = field(default_factory=dict)

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, **self.security, **extra}

    def user_settings(self, user: str, password: str) -> dict[str, str]:
        """librdkafka settings of `user`."""
        return {**self.security, "sasl.username": user, "sasl.password": password}

    def broker_sh(self, *args: str, timeout: float = 300) -> str:
        out = subprocess.run([str(BROKER_SH), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise AssertionError(f"broker.sh {' '.join(args[:2])} failed:\n{out.stderr}{out.stdout}")
        return out.stdout

    def add_user(self, user: str, password: str) -> None:
        self.broker_sh("user", user, password)

    def run_documented_acls(self, block: str, values: Mapping[str, str]) -> None:
        """Run docs/security.md's block `block` through Kafka's own kafka-acls, as admin."""
        for args in documented_acls(block, values):
            self.broker_sh("kafka-acls", *args)

    def grant(self, block: str, values: Mapping[str, str], *, leave_out: int | None = None) -> None:
        """The ACLs of docs/security.md's block `block` (but its command number `leave_out`, from 1),
        created through the admin API: quicker than a JVM per command."""
        bindings = [b for i, args in enumerate(documented_acls(block, values), 1) if i != leave_out
                    for b in acl_bindings(args)]
        for f in self.admin.create_acls(bindings, request_timeout=30).values():
            f.result(timeout=30)


def documented_acls(block: str, values: Mapping[str, str]) -> list[list[str]]:
    """The kafka-acls commands of the ```bash block after ``<!-- acls: BLOCK -->`` in
    docs/security.md, variables filled in from `values`, without the program name and the
    --bootstrap-server / --command-config pairs (broker.sh supplies them)."""
    text = SECURITY_DOC.read_text()
    m = re.search(rf"<!-- acls: {re.escape(block)} -->\s*```bash\n(.*?)```", text, re.S)
    assert m is not None, f"no ACL block {block!r} in {SECURITY_DOC}"
    commands = []
    for line in m.group(1).replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        filled = re.sub(r"\$\{?(\w+)\}?", lambda v: values[v.group(1)], line)
        words = shlex.split(filled)
        assert words[0] == "kafka-acls.sh", line
        args, i = [], 1
        while i < len(words):
            if words[i] in ("--bootstrap-server", "--command-config"):
                i += 2
                continue
            args.append(words[i])
            i += 1
        commands.append(args)
    return commands


_RESOURCES = {"--topic": ResourceType.TOPIC, "--group": ResourceType.GROUP,
              "--transactional-id": ResourceType.TRANSACTIONAL_ID}


def acl_bindings(args: list[str]) -> list[AclBinding]:
    """What one `kafka-acls --add` command creates, as admin API bindings."""
    principal, pattern = "", ResourcePatternType.LITERAL
    ops: list[AclOperation] = []
    resources: list[tuple[ResourceType, str]] = []
    it = iter(args)
    for a in it:
        if a == "--add":
            continue
        value = next(it)
        if a == "--allow-principal":
            principal = value
        elif a == "--operation":
            ops.append(AclOperation[re.sub(r"(?<!^)(?=[A-Z])", "_", value).upper()])
        elif a == "--resource-pattern-type":
            pattern = ResourcePatternType[value.upper()]
        elif a in _RESOURCES:
            resources.append((_RESOURCES[a], value))
        else:
            raise AssertionError(f"kafka-acls option {a} is not translated")
    return [AclBinding(rt, name, pattern, principal, "*", op, AclPermissionType.ALLOW)
            for rt, name in resources for op in ops]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def secure_broker(work: Path) -> Iterator[SecureKafka]:
    """A SASL_SSL broker on KAFKA_SASL_PORT (19792) with its data in `work`, started here (the first
    start fetches the jars: bounded) and stopped after, by the PID it recorded."""
    env = {**os.environ, "KAFKA_PORT": str(PORT), "KAFKA_WORK": str(work), "KAFKA_SECURITY": "sasl_ssl"}
    out = subprocess.run([str(BROKER_SH), "start"], env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"the SASL_SSL broker failed to start:\n{out.stderr}")
    pid = int((work / "broker.pid").read_text())
    try:
        admin = dict(line.split("=", 1) for line in (work / "admin-librdkafka.properties").read_text().splitlines()
                     if "=" in line)
        k = SecureKafka(bootstrap=out.stdout.strip().splitlines()[-1], origin="broker.sh sasl_ssl", work=work,
                        env=env, security=admin)
        _warm(k)
        yield k
    finally:
        subprocess.run([str(BROKER_SH), "stop"], env=env, capture_output=True, timeout=120)
        deadline = time.monotonic() + 30
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
