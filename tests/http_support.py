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
