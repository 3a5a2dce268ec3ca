"""Kafka client settings from code, a file and the environment: precedence, refusals, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

import processor as p
from processor import _kafka_config as kc
from processor._cli import build_parser
from processor._engine import kafka as kio
from processor._errors import ConfigurationError
from processor._logs import KAFKA_LOG

SECRET = "hunter2-very-secret"


def _file(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "client.properties"
    f.write_text(text)
    return f


def test_the_environment_overrides_the_file_which_overrides_code(tmp_path: Path) -> None:
    code = kc.from_code({"security.protocol": "SSL", "sasl.mechanism": "PLAIN", "client.id": "from-code"}, "App")
    f = _file(tmp_path, "security.protocol=SASL_SSL\nsasl.mechanism = SCRAM-SHA-256\n")
    env = {"PROCESSOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "UNRELATED": "x"}
    merged = kc.resolve(code, file=f, environ=env)
    assert dict(merged.settings) == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                     "client.id": "from-code"}
    assert merged.origins["client.id"] == "App"
    assert merged.origins["security.protocol"] == f"file {f}"
    assert merged.origins["sasl.mechanism"] == "env PROCESSOR_KAFKA_SASL_MECHANISM"


def test_the_file_comes_from_the_environment_when_not_given(tmp_path: Path) -> None:
    f = _file(tmp_path, "# a comment\n! another\n\nssl.ca.location: /etc/ca.pem\n")
    merged = kc.resolve(None, environ={kc.FILE_ENV: str(f)})
    assert dict(merged.settings) == {"ssl.ca.location": "/etc/ca.pem"}


def test_environment_names_map_underscores_to_dots_and_double_underscores_to_one() -> None:
    cfg = kc.from_environ({"PROCESSOR_KAFKA_SSL_CA_LOCATION": "/ca.pem", "PROCESSOR_KAFKA_FOO__BAR": "1",
                           kc.FILE_ENV: "/not/a/setting"})
    assert dict(cfg.settings) == {"ssl.ca.location": "/ca.pem", "foo_bar": "1"}


@pytest.mark.parametrize("key", sorted(kc.ENGINE_OWNED))
def test_every_engine_owned_setting_is_refused_from_code(key: str) -> None:
    with pytest.raises(ConfigurationError, match=f"'{key}' is the processor's own"):
        p.App("shop", kafka_config={key: "x"})


def test_an_engine_owned_setting_from_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"PROCESSOR_KAFKA_ISOLATION_LEVEL.*'isolation.level'"):
        kc.resolve(None, environ={"PROCESSOR_KAFKA_ISOLATION_LEVEL": "read_uncommitted"})


def test_an_engine_owned_setting_in_the_file_names_the_file(tmp_path: Path) -> None:
    f = _file(tmp_path, "transactional.id=mine\n")
    with pytest.raises(ConfigurationError, match=f"file {f}.*'transactional.id'"):
        kc.resolve(None, file=f, environ={})


def test_a_java_only_setting_says_what_librdkafka_wants_instead(tmp_path: Path) -> None:
    f = _file(tmp_path, f'sasl.jaas.config=ScramLoginModule required username="u" password="{SECRET}";\n')
    with pytest.raises(ConfigurationError, match=r"sasl.username and sasl.password") as e:
        kc.resolve(None, file=f, environ={})
    assert SECRET not in str(e.value)


def test_a_line_without_a_value_and_a_missing_file_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="line 2: expected key=value"):
        kc.from_file(_file(tmp_path, "a=1\njust-a-word\n"))
    with pytest.raises(ConfigurationError, match="cannot read the Kafka config file"):
        kc.from_file(tmp_path / "missing.properties")


def test_a_value_that_is_not_a_scalar_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="must be a string, number or boolean"):
        kc.from_code({"ssl.ca.location": ["a", "b"]}, "Client(kafka_config=...)")


@pytest.mark.parametrize("key", ["sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
                                 "sasl.oauthbearer.client.secret", "sasl.oauthbearer.config", "ssl_key"])
def test_secrets_never_show_in_repr_describe_or_app_config(key: str) -> None:
    app = p.App("shop", kafka_config={key: SECRET, "sasl.username": "shop"})
    for text in (repr(app.kafka_config), app.kafka_config.describe(), repr(app.config)):
        assert SECRET not in text
    assert "sasl.username=shop" in app.kafka_config.describe()
    assert kc.REDACTED in app.kafka_config.describe()


def test_settings_that_are_not_secret_are_shown() -> None:
    assert kc.redact({"security.protocol": "SASL_SSL", "ssl.ca.location": "/ca.pem"}) == {
        "security.protocol": "SASL_SSL", "ssl.ca.location": "/ca.pem"}


def test_an_invalid_setting_fails_with_a_configuration_error_that_shows_no_secret() -> None:
    config = kio.client_config("127.0.0.1:1", kc.from_code({"sasl.password": SECRET, "no.such.setting": "1"}, "t"))
    with pytest.raises(ConfigurationError, match=r"no\.such\.setting") as e:
        kio.connect(config, timeout=1)
    assert SECRET not in str(e.value)


def test_every_client_config_carries_the_user_settings_under_the_engine_owned_ones() -> None:
    app = p.App("shop", kafka_config={"security.protocol": "SASL_SSL", "client.id": "shop-1"})
    base = kio.client_config("127.0.0.1:9092", app.kafka_config)
    producer = kio.producer_config(base, app, "shop-i-0")
    consumer = kio.consumer_config(base, app)
    for cfg in (base, producer, consumer):
        assert cfg["security.protocol"] == "SASL_SSL" and cfg["bootstrap.servers"] == "127.0.0.1:9092"
        assert cfg["logger"] is KAFKA_LOG
    assert producer["transactional.id"] == "shop-i-0" and consumer["isolation.level"] == "read_committed"


def test_the_client_takes_kafka_config_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSOR_KAFKA_CLIENT_ID", "from-env")
    client = p.Client("127.0.0.1:1", "shop", kafka_config={"client.id": "from-code", "socket.timeout.ms": 5000})
    try:
        assert client.kafka_config.settings == {"client.id": "from-env", "socket.timeout.ms": 5000}
    finally:
        client.close()
    with pytest.raises(ConfigurationError, match=r"'group.id' is the processor's own"):
        p.Client("127.0.0.1:1", "shop", kafka_config={"group.id": "mine"})


def test_the_run_command_takes_a_kafka_config_file_and_a_log_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kc.FILE_ENV, "/etc/processor/kafka.properties")
    args = build_parser().parse_args(["run", "m:app", "--log-format", "json"])
    assert args.kafka_config == "/etc/processor/kafka.properties" and args.log_format == "json"
    args = build_parser().parse_args(["run", "m:app", "--kafka-config", "k.properties"])
    assert args.kafka_config == "k.properties" and args.log_format == "text"

