"""HTTP requests to a processor's admin endpoint from tests: the status and body, errors included."""

from __future__ import annotations

import urllib.error
import urllib.request


def request(url: str, *, method: str = "GET", token: str | None = None) -> tuple[int, bytes]:
    """`method` `url` (with a bearer `token`); (status, body) whatever the status."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def exchange(url: str, *, method: str = "POST", body: bytes | None = None, token: str | None = None,
             headers: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    """`method` `url` with `body` and `headers`; (status, response headers lowercased, body) whatever
    the status."""
    req = urllib.request.Request(url, method=method, data=body)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
