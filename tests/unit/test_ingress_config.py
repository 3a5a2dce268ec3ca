"""The HTTP ingress refuses a configuration it cannot serve safely, before anything connects: beyond
loopback without a token, bad bounds, a service whose name is one of its own paths."""

from __future__ import annotations

import pytest

import processor as p
from processor._cli import main
from processor._ingress import Ingress, IngressConfig


def test_beyond_loopback_the_ingress_needs_a_token() -> None:
    IngressConfig(port=0).check()
    IngressConfig(port=0, host="::1").check()
    IngressConfig(port=0, host="0.0.0.0", token="t").check()
    with pytest.raises(p.ConfigurationError, match="beyond loopback, without a token"):
        IngressConfig(port=0, host="0.0.0.0").check()


@pytest.mark.parametrize("bad", [{"port": 70000}, {"port": 0, "timeout_s": 0}, {"port": 0, "max_body": 0},
                                 {"port": 0, "max_requests": -1}])
def test_bad_bounds_are_configuration_errors(bad: dict[str, float]) -> None:
    with pytest.raises(p.ConfigurationError):
        IngressConfig(**bad).check()  # type: ignore[arg-type]


def test_a_service_named_like_an_ingress_path_is_refused() -> None:
    app = p.App("reserved")

    @app.service("awakeables").handler()
    async def resolve(ctx: p.Context, value: object) -> None:
        return None
    with pytest.raises(p.ConfigurationError, match="reserves the path /awakeables"):
        Ingress.start(app, IngressConfig(port=0), "127.0.0.1:1")


def test_the_cli_stops_with_exit_code_2_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "tests.apps.typed:app", "--bootstrap-servers", "127.0.0.1:1", "--workers", "1",
                 "--state-dir", "/nonexistent-dir-never-created", "--ingress-port", "0", "--ingress-host", "0.0.0.0"])
    assert code == 2
    assert "--ingress-token" in capsys.readouterr().err
