"""A real box and Debian's Chromium, headless, driven by Playwright.

The box runs as an operator would start it (`tests/harness.py`), with two agencies so
that admin scope can be checked: ``demo.go.th`` (somchai is its agency admin) and
``other.go.th``. Chromium is Debian's ``/usr/bin/chromium`` (`make test` installs it);
Playwright only drives it and never downloads a browser of its own.

Screenshots of the main pages go to ``tests/artifacts/screenshots`` (or
``$EDGEBOX_ARTIFACTS/screenshots``), kept by CI as test artefacts.

Every page a test opens is watched: a Content-Security-Policy violation or an uncaught
script error fails the test (`watch`), so inline script or style cannot creep in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import RunningBox, edgebox_commands, require_tool, start_box

DOMAIN = "demo.go.th"
OTHER = "other.go.th"
USERS: dict[str, tuple[str, str, list[str]]] = {
    # address: (password, Thai name, extra `user add` flags)
    f"somchai@{DOMAIN}": ("somchai-demo-2026", "สมชาย ใจดี", ["--admin", "--rank", "8"]),
    f"malee@{DOMAIN}": ("malee-demo-2026", "มาลี ศรีสุข", ["--rank", "5"]),
    f"nida@{OTHER}": ("nida-other-2026", "นิดา มีสุข", ["--admin", "--rank", "6"]),
}
ARTIFACTS = Path(os.environ.get("EDGEBOX_ARTIFACTS", Path(__file__).parents[2] / "artifacts"))
SCREENSHOTS = ARTIFACTS / "screenshots"

#: As the machine's notes advise for a closed network: no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip


@pytest.fixture(scope="session")
def web_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBox]:
    data = tmp_path_factory.mktemp("browser") / "box"
    edgebox_commands(
        (["init", "--data", str(data), "--domain", DOMAIN, "--agency-name", "สำนักงานสาธิต"], ""),
        (["agency", "add", "--data", str(data), OTHER, "--name", "กรมตัวอย่าง"], ""),
        *(
            (["user", "add", "--data", str(data), address, "--name", name, *flags,
              "--password-stdin"], password + "\n")
            for address, (password, name, flags) in USERS.items()
        ),
    )  # fmt: skip
    box = start_box(data)
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    executable = require_tool("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watched:
    """A page with its CSP violations and script errors collected."""

    page: Any
    base: str
    problems: list[str] = field(default_factory=list)

    def go(self, path: str) -> Any:
        response = self.page.goto(self.base + path)
        return response

    def screenshot(self, name: str, *, full_page: bool = True) -> Path:
        """Save the page (or, with ``full_page=False``, what the screen shows)."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def assert_clean(self) -> None:
        assert not self.problems, "\n".join(self.problems)


@dataclass
class Browsers:
    """Opens browser contexts (separate cookie jars: separate people) on the box."""

    chromium: Any
    box: RunningBox
    opened: list[Any] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.box.port('https')}"

    def new(self, *, width: int = 1280, height: int = 800, locale: str = "th-TH") -> Watched:
        context = self.chromium.new_context(
            ignore_https_errors=True,  # the box's own CA; curl tests check the chain
            locale=locale,
            viewport={"width": width, "height": height},
        )
        self.opened.append(context)
        page = context.new_page()
        watched = Watched(page, self.base)
        page.on("console", lambda msg: _console(watched, msg))
        page.on("pageerror", lambda exc: watched.problems.append(f"script error: {exc}"))
        return watched

    def signed_in(self, address: str, **options: Any) -> Watched:
        watched = self.new(**options)
        page = watched.page
        watched.go("/signin")
        page.get_by_label(re.compile("ที่อยู่อีเมล|Email address")).fill(address)
        page.get_by_label(re.compile("รหัสผ่าน|Password")).fill(USERS[address][0])
        page.get_by_role("button", name=re.compile("เข้าสู่ระบบ|Sign in")).click()
        page.wait_for_url(re.compile(r".*/(mail|chat|admin|settings).*"))
        return watched

    def close(self) -> None:
        for context in self.opened:
            context.close()


def _console(watched: Watched, message: Any) -> None:
    text = message.text
    if message.type == "error" and ("Content Security Policy" in text or "Refused to" in text):
        watched.problems.append(f"CSP: {text}")


@pytest.fixture
def browsers(chromium: Any, web_box: RunningBox) -> Iterator[Browsers]:
    opened = Browsers(chromium, web_box)
    try:
        yield opened
    finally:
        opened.close()
