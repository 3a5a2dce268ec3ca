"""On a SASL_SSL broker (SCRAM-SHA-512, TLS with a CA of its own, StandardAuthorizer), an app whose
principal has exactly the ACLs docs/security.md lists processes its records exactly once, and a
Client with the documented Client ACLs calls it; a wrong password or one missing ACL gets one clear
line and exit 2 (or ConfigurationError) at once, not a retry storm."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

import processor as p
from tests.e2e.harness import ProcessorProcess
from tests.e2e.secured import SecureKafka, secure_broker
from tests.kafka_support import wait_until

pytestmark = pytest.mark.e2e

AT_ONCE_S = 15.0  # a refusal must not wait out a timeout
COUNTER = "tests.apps.counter:app"


@pytest.fixture(scope="session")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    with secure_broker(tmp_path_factory.mktemp("sasl-broker")) as k:
        yield k


@dataclass(frozen=True, slots=True, kw_only=True)
class SecuredApp:
    name: str
    inp: str
    out: str
    user: str
    password: str
    properties: Path  # security settings without the password (that comes from the environment)
    effects: Path

    def values(self, secure: SecureKafka, **more: str) -> dict[str, str]:
        return {"APP": self.name, "IN": self.inp, "OUT": self.out, "APP_USER": f"User:{self.user}",
                "BOOTSTRAP": secure.bootstrap, **more}

    def process(self, secure: SecureKafka, tmp: Path, *, password: str | None = None,
                instance_id: str = "s1") -> ProcessorProcess:
        env = {"COUNTER_APP": self.name, "COUNTER_INPUT": self.inp, "COUNTER_OUTPUT": self.out,
               "COUNTER_EFFECTS": str(self.effects), "PROCESSOR_KAFKA_SASL_PASSWORD": password or self.password}
        return ProcessorProcess(spec=COUNTER, bootstrap=secure.bootstrap, state_dir=tmp / f"state-{instance_id}",
                                instance_id=instance_id, env=env, log_dir=tmp,
                                args=("--kafka-config", str(self.properties)))


def _new_app(secure: SecureKafka, tmp: Path, prefix: str) -> SecuredApp:
    name = secure.unique(prefix)
    user = f"{name}-app"
    password = f"pw-{uuid.uuid4().hex}"
    secure.add_user(user, password)
    props = tmp / f"{name}.properties"
    settings = {k: v for k, v in secure.user_settings(user, password).items() if k != "sasl.password"}
    props.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return SecuredApp(name=name, inp=secure.create_topic(f"{name}-in", 2), out=secure.create_topic(f"{name}-out", 2),
                      user=user, password=password, properties=props, effects=tmp / f"{name}.effects")


@pytest.fixture(scope="module")
def running(secure: SecureKafka,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecuredApp, ProcessorProcess]]:
    """An app whose principal has the documented ACLs, applied with Kafka's own kafka-acls, running."""
    tmp = tmp_path_factory.mktemp("secured-app")
    app = _new_app(secure, tmp, "sec")
    secure.run_documented_acls("app", app.values(secure))
    proc = app.process(secure, tmp)
    try:
        proc.start().wait_ready(90)
        yield app, proc
        assert proc.stop() == 0
    finally:
        proc.ensure_dead()


def test_an_app_with_only_the_documented_acls_processes_every_record_exactly_once(
        secure: SecureKafka, running: tuple[SecuredApp, ProcessorProcess]) -> None:
    app, proc = running
    keys = ("k0", "k1", "k2")
    secure.produce(app.inp, [(keys[i % 3].encode(), orjson.dumps({"i": i})) for i in range(30)])

    def counts() -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for r in secure.drain(app.out):
            v = orjson.loads(r.value or b"{}")
            if v["key"] in keys:
                out.setdefault(v["key"], []).append(v["count"])
        return out
    wait_until(lambda: sum(map(len, counts().values())) >= 30, 90, "30 outputs")
    assert counts() == {k: list(range(1, 11)) for k in keys}  # each record once: no gap, no repeat
    log = proc.log()
    assert "sasl.password=[redacted]" in log and app.password not in log
    assert "authorization failed" not in log.lower() and "Traceback" not in log


def _client_call(secure: SecureKafka, app: SecuredApp, settings: dict[str, Any]) -> tuple[Any, float]:
    async def go() -> Any:
        async with p.Client(secure.bootstrap, app.name, kafka_config=settings) as client:
            return await client.call("counter/count", {"i": 0}, key=f"client-{uuid.uuid4().hex[:6]}",
                                     timeout=timedelta(seconds=60))
    started = time.monotonic()
    try:
        return asyncio.run(go()), time.monotonic() - started
    except Exception as e:
        return e, time.monotonic() - started


def test_a_client_with_only_the_documented_client_acls_calls_the_app(
        secure: SecureKafka, running: tuple[SecuredApp, ProcessorProcess]) -> None:
    app, _ = running
    user, password = f"{app.name}-client", f"pw-{uuid.uuid4().hex}"
    secure.add_user(user, password)
    secure.run_documented_acls("client", app.values(secure, CLIENT_USER=f"User:{user}"))
    result, _ = _client_call(secure, app, secure.user_settings(user, password))
    assert result == 1


def test_a_client_with_a_wrong_password_or_a_missing_acl_gets_a_configuration_error_at_once(
        secure: SecureKafka, running: tuple[SecuredApp, ProcessorProcess]) -> None:
    app, _ = running
    user, password = f"{app.name}-client2", f"pw-{uuid.uuid4().hex}"
    secure.add_user(user, password)
    secure.grant("client", app.values(secure, CLIENT_USER=f"User:{user}"), leave_out=2)  # no Read on results

    err, took = _client_call(secure, app, secure.user_settings(user, "wrong-password"))
    assert isinstance(err, p.ConfigurationError), repr(err)
    assert "authentication failed" in str(err) and took < AT_ONCE_S, (str(err), took)
    assert "wrong-password" not in str(err)

    err, took = _client_call(secure, app, secure.user_settings(user, password))
    assert isinstance(err, p.ConfigurationError), repr(err)
    assert f"{app.name}.results" in str(err) and "authorization failed" in str(err).lower(), str(err)
    assert took < AT_ONCE_S, took


def test_a_wrong_password_stops_the_processor_at_once_with_one_line(
        secure: SecureKafka, running: tuple[SecuredApp, ProcessorProcess], tmp_path: Path) -> None:
    app, _ = running
    proc = app.process(secure, tmp_path, password="not-the-password", instance_id="wrong")
    started = time.monotonic()
    try:
        code = proc.start().wait_exit(60)
    finally:
        proc.ensure_dead()
    took = time.monotonic() - started
    log = proc.log()
    assert code == 2 and took < AT_ONCE_S, (code, took, log[-2000:])
    final = [line for line in log.splitlines() if line.startswith("processor: ")]
    assert len(final) == 1 and "refused the connection: authentication failed" in final[0], log[-2000:]
    assert sum("authentication" in line.lower() for line in log.splitlines()) <= 2, log[-3000:]
    assert "not-the-password" not in log and "Traceback" not in log


def test_a_missing_acl_stops_the_processor_with_one_line_and_exit_2(secure: SecureKafka, tmp_path: Path) -> None:
    app = _new_app(secure, tmp_path, "noacl")
    secure.grant("app", app.values(secure), leave_out=2)  # every documented ACL but Write on the output
    proc = app.process(secure, tmp_path)
    try:
        proc.start().wait_ready(90)
        secure.produce(app.inp, [(b"k", orjson.dumps({"i": 0}))])
        code = proc.wait_exit(60)
    finally:
        proc.ensure_dead()
    log = proc.log()
    assert code == 2, log[-3000:]
    final = [line for line in log.splitlines() if line.startswith("processor: ")]
    assert len(final) == 1 and f"delivery to {app.out} failed" in final[0], log[-3000:]
    assert "authorization failed" in final[0].lower()
    assert "rebuilding" not in log and "Traceback" not in log, log[-3000:]
