"""`/-/dashboard` in a real headless Chromium (Debian's package, driven by playwright): it loads,
shows the deployments, replicas and router weights, its numbers and charts move as requests
arrive, and server errors appear. Screenshots are kept as test artifacts.

Run with `nox -s browser` (or `pytest -m browser`); the main test session leaves these out. The
fixture installs Chromium with apt-get when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import servekit as sk

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 30_000


@sk.deployment(max_ongoing_requests=32)
class Model:
    def __init__(self, scale: float) -> None:
        self.scale = scale

    @sk.batch(max_batch_size=8, max_wait_ms=10)
    async def predict(self, xs: list[float]) -> list[float]:
        return [self.scale * x for x in xs]


@sk.deployment
class Api:
    def __init__(self, model: sk.DeploymentHandle) -> None:
        self.model = model

    @sk.endpoint("/predict/{x}", methods=["GET"])
    async def predict(self, x: float) -> dict[str, float]:
        return {"y": await self.model.predict(x)}

    @sk.endpoint("/fail", methods=["GET"])
    async def fail(self) -> None:
        raise RuntimeError("the dashboard should show this")


def dashboard_app() -> sk.Application:
    arms = {
        "v1": Model.options(name="ModelV1", version="v1").bind(2.0),
        "v2": Model.options(name="ModelV2", version="v2").bind(3.0),
    }
    return Api.bind(sk.split(arms, weights={"v1": 80, "v2": 20}, name="model"))


def _install_chromium() -> None:
    """Debian's chromium, installed here when missing (as root, or through sudo -n)."""
    if CHROMIUM.exists():
        return
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr[-2000:]}"
    assert CHROMIUM.exists(), "apt-get installed chromium but /usr/bin/chromium is missing"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium driven by playwright."""
    _install_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $SERVEKIT_TEST_ARTIFACTS, else `dashboard-screenshots` under pytest's basetemp."""
    configured = os.environ.get("SERVEKIT_TEST_ARTIFACTS")
    folder = Path(configured) if configured else tmp_path_factory.getbasetemp() / "dashboard-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_dashboard_shows_the_app_and_updates_as_requests_arrive(
    browser: Any, artifacts: Path, client: httpx.Client
) -> None:
    with sk.serve(dashboard_app(), port=0, blocking=False) as server:
        for x in range(10):  # history before the page opens
            assert client.get(f"{server.url}/predict/{x}").status_code == 200
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(server.url + "/-/dashboard")
        page.wait_for_function("Number(document.body.dataset.polls) >= 1", timeout=WAIT_MS)

        for name in ("Api", "ModelV1", "ModelV2"):
            assert page.locator(f'#deployments tr[data-deployment="{name}"]').count() == 1
        assert page.locator("#replicas tr[data-replica]").count() == 3
        assert "cpu" in page.locator('#replicas tr[data-replica="ModelV1#0"]').inner_text()
        assert page.locator('#routers tr[data-router="model"]').count() == 2
        assert "80" in page.locator('#routers tr[data-arm="v1"]').inner_text()
        assert page.locator("#app-state").inner_text() == "running"
        served = int(page.locator("#stat-total").inner_text().replace(",", ""))
        assert served >= 10

        for x in range(40):
            client.get(f"{server.url}/predict/{x}")
        assert client.get(f"{server.url}/fail").status_code == 500
        page.wait_for_function(
            f"Number(document.getElementById('stat-total').textContent.replace(/,/g, '')) >= {served + 41}",
            timeout=WAIT_MS,
        )
        for x in range(3):  # a few more seconds of traffic: several samples on the charts
            client.get(f"{server.url}/predict/{x}")
            page.wait_for_function(
                f"Number(document.getElementById('chart-latency').dataset.points) > {3 * x}", timeout=WAIT_MS
            )
        assert page.locator("#stat-rps").inner_text()[0].isdigit()
        page.wait_for_function(
            "document.getElementById('errors').textContent.includes('/fail')", timeout=WAIT_MS
        )
        assert "500" in page.locator("#errors").inner_text()
        assert "avg over" in page.locator('#replicas tr[data-replica="ModelV1#0"]').inner_text()
        shot = artifacts / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        page.close()
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
