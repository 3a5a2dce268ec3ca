"""Debian's headless chromium for the web UI's tests, driven by Playwright through its executable
path (Playwright's own browser download is never used; deploy/test.sh installs the package)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, sync_playwright


@contextmanager
def chromium() -> Iterator[Browser]:
    path = shutil.which("chromium")
    assert path, "no chromium on PATH: deploy/test.sh installs Debian's chromium (apt-get install -y chromium)"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, headless=True)
        try:
            yield b
        finally:
            b.close()
