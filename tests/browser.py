"""Browser tests: Debian's Chromium driven by Playwright, pages that record what goes wrong in them,
and accessibility checks with the vendored axe-core.

tests/conftest.py loads this module as a plugin (``pytest_plugins = ["browser"]``). ``chromium`` is
/usr/bin/chromium launched by Playwright, one per test module (nothing ever downloads a browser:
never run ``playwright install``); ``open_page`` gives a watched page in a fresh context. Without
Chromium or Playwright the browser tests skip, or fail when EODEPLOY_REQUIRE_EXTRAS=1.

    def test_map(open_page, live):           # live: a server's base URL
        watched = open_page(f"{live}/dashboard")
        ...
        watched.assert_clean()               # no console error, page error, failed request, HTTP error
        assert axe(watched.page) == []       # no serious or critical accessibility violation
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest
import requests

from eodeploy.web.assets import FETCH_COMMAND, VENDOR_DIR
from servers import free_port, stop

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response

CHROMIUM = Path("/usr/bin/chromium")
AXE_JS = VENDOR_DIR / "axe-core" / "axe.min.js"
SERIOUS = ("serious", "critical")
TESTS = Path(__file__).resolve().parent


def unavailable(reason: str) -> NoReturn:
    """Skip, unless CI demands every optional stack (EODEPLOY_REQUIRE_EXTRAS=1): then fail."""
    if os.environ.get("EODEPLOY_REQUIRE_EXTRAS") == "1":
        pytest.fail(f"{reason} (required: EODEPLOY_REQUIRE_EXTRAS=1)", pytrace=False)
    pytest.skip(reason)


def require_browser() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("playwright is not installed: pip install -e '.[dev]'")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless (--no-sandbox as root), one per test module. Module-scoped on
    purpose: Playwright's sync API runs an event loop in this thread while it is started, and a
    session-long one broke every later test that calls asyncio.run()."""
    require_browser()
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class WatchedPage:
    """A page and everything that went wrong in it since it opened."""

    page: Page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    http_errors: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return [
            *(f"console error: {m}" for m in self.console_errors),
            *(f"uncaught: {m}" for m in self.page_errors),
            *(f"request failed: {m}" for m in self.failed_requests),
            *(f"HTTP error: {m}" for m in self.http_errors),
        ]

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, "the page reported:\n" + "\n".join(problems)

    def clear(self) -> None:
        """Forget what was recorded, e.g. after provoking an error on purpose."""
        for found in (self.console_errors, self.page_errors, self.failed_requests, self.http_errors):
            found.clear()


def watch(page: Page) -> WatchedPage:
    watched = WatchedPage(page)

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            loc = msg.location
            watched.console_errors.append(f"{msg.text} ({loc.get('url', '')}:{loc.get('lineNumber', '')})")

    def on_request_failed(req: Request) -> None:
        watched.failed_requests.append(f"{req.method} {req.url}: {req.failure}")

    def on_response(resp: Response) -> None:
        if resp.status >= 400:
            watched.http_errors.append(f"{resp.request.method} {resp.url}: {resp.status}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: watched.page_errors.append(f"{exc.name}: {exc.message}"))
    page.on("requestfailed", on_request_failed)
    page.on("response", on_response)
    return watched


@pytest.fixture
def open_page(request: pytest.FixtureRequest) -> Callable[..., WatchedPage]:
    """``open_page(url=None, **context_options)``: a new page in a fresh browser context
    (closed after the test), watched from its first request;
    it goes to ``url`` when one is given."""
    browser = request.getfixturevalue("chromium")
    contexts: list[Any] = []
    request.addfinalizer(lambda: [c.close() for c in contexts])

    def open_(url: str | None = None, **context_options: Any) -> WatchedPage:
        contexts.append(browser.new_context(**context_options))
        watched = watch(contexts[-1].new_page())
        if url is not None:
            watched.page.goto(url)
        return watched

    return open_


def axe(page: Page, selector: str | None = None, impacts: Sequence[str] = SERIOUS) -> list[dict[str, Any]]:
    """axe-core's violations of the given impacts on the page (or the part under ``selector``), each
    as {id, impact, help, targets}. The vendored axe.min.js is evaluated through the DevTools
    protocol, which the page's Content-Security-Policy does not govern."""
    if not AXE_JS.is_file():
        unavailable(f"{AXE_JS} is missing: run {FETCH_COMMAND}")
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(AXE_JS.read_text(encoding="utf-8"))
    result = page.evaluate(
        "async (sel) => await axe.run(sel ? document.querySelector(sel) : document, {resultTypes: ['violations']})",
        selector,
    )
    return [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "targets": [n["target"] for n in v["nodes"]],
        }
        for v in result["violations"]
        if v["impact"] in impacts
    ]


@contextmanager
def static_site(root: Path, log: Path) -> Iterator[str]:
    """A real uvicorn serving the pages in ``root`` and the vendored files at /static/vendor/
    (tests/static_site.py) on 127.0.0.1; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "EODEPLOY_TEST_SITE": str(root)}
    argv = [
        sys.executable, "-m", "uvicorn", "--factory", "static_site:create_app", "--app-dir", str(TESTS),
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"static site exited with {proc.returncode}:\n{log.read_text()}")
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"static site not up after 30 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        stop(proc)
