"""A real browser on a running dashboard: `callward dashboard` as a subprocess, headless
Chromium (Debian's package) driven by Playwright, every page loaded, no error box on any,
and a screenshot of each."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dashboard.conftest import REPO
from tests.dashboard.store_fixture import FixtureStore

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
ERROR_BOXES = '[data-testid="stException"], [data-testid="stAlertContentError"]'

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (make test installs it)"
)


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
                page.goto(f"{dashboard_url}/{path}", wait_until="domcontentloaded")
                page.wait_for_selector(
                    '[data-testid="stApp"][data-test-script-state="notRunning"]',
                    timeout=60_000,
                )
                page.wait_for_selector("h1", timeout=30_000)
                errors = page.locator(ERROR_BOXES)
                assert errors.count() == 0, f"{name}: {errors.first.inner_text()}"
                heading = page.locator("h1").first.inner_text()
                assert heading.strip(), f"{name}: the page has no title"
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        finally:
            browser.close()
    saved = sorted(p.stem for p in shots.glob("*.png"))
    assert saved == sorted(PAGES)
    target = os.environ.get("CALLWARD_SCREENSHOTS_DIR")
    if target:  # refresh the README's screenshots: CALLWARD_SCREENSHOTS_DIR=docs/screenshots
        for shot in shots.glob("*.png"):
            shutil.copy(shot, Path(target) / shot.name)
