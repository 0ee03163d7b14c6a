"""A real headless Chromium (Debian's ``chromium``) driven by Playwright, for page tests.

    with browser_page(ignore_https_errors=True) as (page, console):
        page.goto(url)
        assert not console.errors

``console`` collects console messages of type error, page errors (uncaught
exceptions) and failed requests, so a test can assert a clean page. The test
is skipped when /usr/bin/chromium is missing (``make test`` installs it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

CHROMIUM = os.environ.get("SLAPOS_COLLECT_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@dataclass
class Console:
    errors: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@contextmanager
def browser_page(ignore_https_errors: bool = False, timeout_ms: float = 30000) -> Iterator[tuple[object, Console]]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    console = Console()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(ignore_https_errors=ignore_https_errors)
            page = context.new_page()
            page.set_default_timeout(timeout_ms)

            def on_console(message) -> None:
                console.messages.append(f"{message.type}: {message.text}")
                if message.type == "error":
                    console.errors.append(message.text)

            page.on("console", on_console)
            page.on("pageerror", lambda exc: console.errors.append(f"page error: {exc}"))
            page.on("requestfailed", lambda request: console.errors.append(
                f"request failed: {request.url} {request.failure}"))
            page.on("request", lambda request: console.requests.append(request.url))
            yield page, console
        finally:
            browser.close()
