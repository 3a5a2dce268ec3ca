"""The web UI's files: plain HTML, JavaScript modules and CSS under ``processor/_admin/static``,
shipped as package data and served by the admin endpoint at ``/ui/`` (no build step). The page
reads and acts through the JSON API like any other client. See docs/operate.md, "The web UI".

The files hold no data and no secret (they are the same for every install), so they are served
without a token even beyond loopback: a browser cannot put a bearer header on a page load, and the
operator has to reach the page to type the token. Every ``/api`` call the page makes carries it.
The headers below keep the page from running anything but its own files (no inline script, no
framing, no other origin), which guards the token the page keeps in ``sessionStorage``.
"""

from __future__ import annotations

import functools
from importlib import resources

TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@functools.cache
def _assets() -> dict[str, tuple[bytes, str]]:
    """Every file directly in ``static/`` with a known type, read once: a name not listed here is
    a 404, so no request path can leave the folder."""
    out = {}
    for f in (resources.files("processor._admin") / "static").iterdir():
        suffix = "." + f.name.rpartition(".")[2]
        if f.is_file() and suffix in TYPES:
            out[f.name] = (f.read_bytes(), TYPES[suffix])
    return out


def asset(name: str) -> tuple[bytes, str] | None:
    """The UI file `name` (``""``: the page itself) and its content type; None when there is none."""
    return _assets().get(name or "index.html")
