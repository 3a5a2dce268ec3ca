"""Access rules shared by the HTTP endpoints (the admin endpoint and the ingress)."""

from __future__ import annotations

import hmac
import ipaddress

from processor._errors import ConfigurationError


def is_loopback(host: str) -> bool:
    """Whether `host` (an address, or "localhost") is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(what: str, host: str, port: int, token: str | None, flag: str, env: str) -> None:
    """Refuse (ConfigurationError) a port out of range, or listening beyond loopback without a token.
    `what` names the endpoint in the message, `flag` its command-line prefix (``--admin``), `env`
    the token's environment variable."""
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"{flag.removeprefix('--')} port {port} is not a port number")
    if not is_loopback(host) and not token:
        raise ConfigurationError(
            f"the {what} would listen on {host}, beyond loopback, without a token: set "
            f"{flag}-token or {env} (or keep {flag}-host 127.0.0.1)")


def bearer_ok(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries bearer token `token` (compared in constant time)."""
    if not token or not header:
        return False
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
