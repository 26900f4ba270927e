"""A real browser for the dashboard's tests: Playwright for Python driving Debian's chromium
(Playwright's own browser download is not reachable here; /usr/bin/chromium is). Started with
the flags that keep it from reaching out by itself: no background networking, no component
updates, no sync, a fresh profile."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.support.tools import need

FLAGS = [
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
]


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium browser (Playwright's Browser)."""
    binary = need("chromium", "chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright not installed (pip install playwright)"
        if os.environ.get("SPLITDNS_REQUIRE_REAL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class PageWatch:
    """What a page did that it should not: console errors, uncaught exceptions, requests to
    any origin but its own."""

    def __init__(self, page: Any, origin: str) -> None:
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.origin = origin
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("request", self._request)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")

    def _request(self, request: Any) -> None:
        if not request.url.startswith(self.origin + "/") and not request.url.startswith("data:"):
            self.foreign.append(request.url)
