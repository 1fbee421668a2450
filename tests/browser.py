"""Chromium for the console tests: Debian's ``chromium`` package (``./dev test`` installs
it) driven by Playwright, one browser per test module, and a ``tab`` fixture whose page
must log no console error. Registered as a plugin in conftest.py."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@dataclass
class Tab:
    """A page, and every console error it logged."""

    page: Page
    errors: list[str] = field(default_factory=list)
    expected_statuses: set[int] = field(default_factory=set)

    def collect(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        status = re.match(
            r"Failed to load resource: the server responded with a status of (\d+)", message.text
        )
        if status and int(status.group(1)) in self.expected_statuses:
            return  # a page the test asked for on purpose (a bad token, another org's device)
        self.errors.append(f"{message.text} ({message.location.get('url')})")


def open_tab(browser: Browser, viewport: dict[str, int]) -> Tab:
    context = browser.new_context(viewport=viewport)
    tab = Tab(context.new_page())
    tab.page.on("console", tab.collect)
    tab.page.on("pageerror", lambda error: tab.errors.append(f"uncaught: {error}"))
    tab.page.set_default_timeout(15_000)
    return tab


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run ./dev test, or apt-get install chromium")
    with sync_playwright() as started:
        launched = started.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    """A laptop-sized page that must log no console error."""
    opened = open_tab(browser, LAPTOP)
    yield opened
    opened.page.context.close()
    assert opened.errors == [], "the console logged errors"
