"""A real browser on a running dashboard: `callward dashboard` as a subprocess, headless
Chromium (Debian's package) driven by Playwright, every page loaded, no error box on any,
and a screenshot of each."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import REPO
from tests.dashboard.store_fixture import EXFIL_SESSION, FixtureStore
from tests.real import require_real

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGES = {
    "overview": "",
    "runaway": "runaway",
    "exfiltration": "exfiltration",
    "sessions": "sessions",
    "replay": "replay",
    "policies": "policies",
}
# A zone far from UTC: a chart that formats in the browser's zone shows other hours.
BROWSER_TZ = "America/New_York"
SCREENSHOTS = REPO / "docs" / "screenshots"
ERROR_BOXES = '[data-testid="stException"], [data-testid="stAlertContentError"]'


@pytest.fixture(autouse=True)
def _chromium() -> None:
    if not CHROMIUM.exists():
        require_real("Chromium", f"{CHROMIUM} is missing (make test installs Debian's chromium)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 90) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the dashboard exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the dashboard never became healthy")


@pytest.fixture()
def dashboard_url(fixture_store: FixtureStore, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "dashboard.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "callward.cli",
            "dashboard",
            "--data",
            str(fixture_store.data_dir),
            "--port",
            str(port),
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode in (0, -15), (tmp_path / "dashboard.log").read_text()
    # Stopping `callward dashboard` stopped the Streamlit server it started.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


# The labels of every time (UTC) x axis in the page's SVG charts.
TIME_TICKS_JS = """
() => [...document.querySelectorAll('[data-testid="stVegaLiteChart"] g.role-axis')]
  .filter(axis => (axis.getAttribute('aria-label') || '').startsWith('X-axis')
               && axis.textContent.includes('(UTC)'))
  .map(axis => [...axis.querySelectorAll('.role-axis-label text')].map(t => t.textContent))
"""


def _loaded(page: Any, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(
        '[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=60_000
    )
    page.wait_for_selector("h1", timeout=30_000)


@pytest.mark.timeout(300)
def test_time_axes_read_utc_in_a_browser_in_new_york(dashboard_url: str) -> None:
    """The exfiltration session's calls are at 20:00:00-20:00:09 UTC (15:00 in New York)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 1440, "height": 1000}, timezone_id=BROWSER_TZ
            )
            page = context.new_page()
            assert page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone") == BROWSER_TZ
            _loaded(page, f"{dashboard_url}/sessions?session={EXFIL_SESSION}")
            page.wait_for_selector('[data-testid="stVegaLiteChart"] g.role-axis', timeout=30_000)
            axes = page.evaluate(TIME_TICKS_JS)
            assert len(axes) == 1 and axes[0], axes
            assert all(label.startswith("20:00") for label in axes[0]), axes[0]

            _loaded(page, dashboard_url)
            page.wait_for_selector('[data-testid="stVegaLiteChart"] g.role-axis', timeout=30_000)
            labels = [label for axis in page.evaluate(TIME_TICKS_JS) for label in axis]
            # Two days from 2026-03-02 00:00 UTC: the second day starts at a UTC midnight,
            # and every other tick is a 24-hour time.
            assert "Mar 03" in labels, labels
            assert all(
                re.fullmatch(r"[A-Z][a-z]{2} \d{2}|([01]\d|2[0-3]):[0-5]\d", label)
                for label in labels
            ), labels
        finally:
            browser.close()


@pytest.mark.timeout(300)
def test_every_page_loads_in_a_real_browser_without_an_error_box(
    dashboard_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            for name, path in PAGES.items():
                _loaded(page, f"{dashboard_url}/{path}")
                errors = page.locator(ERROR_BOXES)
                assert errors.count() == 0, f"{name}: {errors.first.inner_text()}"
                heading = page.locator("h1").first.inner_text()
                assert heading.strip(), f"{name}: the page has no title"
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        finally:
            browser.close()
    saved = sorted(p.stem for p in shots.glob("*.png"))
    assert saved == sorted(PAGES)
    # The screenshots under docs/ are the ones this run took, so they stay current.
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for shot in shots.glob("*.png"):
        shutil.copy(shot, SCREENSHOTS / shot.name)
