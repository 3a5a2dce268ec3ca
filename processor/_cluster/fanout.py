"""Asking instances over their admin endpoints (docs/operate.md), all at once, each within a timeout."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from processor._admin.registry import InstanceRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """One instance's answer: the HTTP status (0: no answer) and the JSON body, or why there is none."""

    instance: InstanceRecord
    status: int
    body: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """The endpoint's ``{"error": ...}`` or what went wrong reaching it."""
        if isinstance(self.body, dict) and "error" in self.body:
            return str(self.body["error"])
        return self.error or f"HTTP {self.status}"


def path(*parts: str) -> str:
    """An API path from its parts, each URL-encoded (a key may hold ``/``)."""
    return "/" + "/".join(quote(p, safe="") for p in parts)


def ask(instance: InstanceRecord, url_path: str, *, token: str | None, timeout: float,
        method: str = "GET") -> Answer:
    req = urllib.request.Request(instance.admin_url.rstrip("/") + url_path, method=method,
                                 data=b"" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Answer(instance=instance, status=r.status, body=_json(r.read()))
    except urllib.error.HTTPError as e:
        return Answer(instance=instance, status=e.code, body=_json(e.read()))
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return Answer(instance=instance, status=0, error=f"{instance.admin_url} did not answer: {reason}")


def ask_all(instances: Sequence[InstanceRecord], url_path: str, *, token: str | None,
            timeout: float) -> list[Answer]:
    """GET `url_path` of every instance in parallel; answers in the order of `instances`."""
    if not instances:
        return []
    with ThreadPoolExecutor(min(16, len(instances)), thread_name_prefix="ask") as pool:
        return list(pool.map(lambda i: ask(i, url_path, token=token, timeout=timeout), instances))


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return {"error": data.decode(errors="replace").strip()[:500]}
