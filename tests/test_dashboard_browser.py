"""The live dashboard in a real headless Chromium: numbers match SQL and update as rows arrive."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fixtures.live.runs import fails, make_spec, verdicts, write_run

from perg.cli.client import SinkClient
from perg.config import load_settings
from services.sink.live.api import create_app
from services.sink.store import ResultStore

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)
playwright_api = pytest.importorskip("playwright.async_api")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ResultStore, str]]:
    store = ResultStore(tmp_path / "perg.duckdb")
    spec = make_spec("r1", 40, methods=("zero_shot",))
    store.save_run(spec)
    store.save_verdicts(
        verdicts(spec, range(20), pref_wrong=fails("a", 20), unfollowed=fails("f", 20))
    )
    async with serving(store, event_interval_s=0.2) as url:
        yield store, url
    store.close()


@asynccontextmanager
async def serving(store: ResultStore, event_interval_s: float) -> AsyncIterator[str]:
    """The sink's API over ``store`` on a free loopback port: its base URL."""
    runner = web.AppRunner(create_app(store, token=None, event_interval_s=event_interval_s))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def chromium_page() -> AsyncIterator[tuple[Any, list[str]]]:
    """A page of a headless Chromium, and the script errors it raises (a list kept filling)."""
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors
        finally:
            await browser.close()


ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "dashboard"


async def screenshot(page: Any, name: str) -> None:
    """Keep a full-page screenshot as a test artefact (test-artifacts/dashboard/NAME.png)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def _sql_value(url: str, tmp_path: Path, metric: str) -> float:
    client = SinkClient(dataclasses.replace(load_settings(), sink_url=url, sink_token=None))
    answer = await asyncio.to_thread(
        client.sql,
        f"SELECT {metric} FROM metrics_by_source WHERE run_id = 'r1' AND setting = 'relevant' "
        "AND method = 'zero_shot' AND source = 'full'",
    )
    value: float = answer["rows"][0][0]
    return value


async def _shown(cell: Any, expected: float, timeout_s: float = 10.0) -> None:
    """Wait until the page shows ``expected`` in ``cell`` (exact value and one-decimal text)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await cell.get_attribute("data-value")
        if value and float(value) == expected:
            assert (await cell.inner_text()).startswith(f"{expected:.1f}")
            return
        assert asyncio.get_running_loop().time() < deadline, f"shows {value}, SQL says {expected}"
        await asyncio.sleep(0.1)


async def test_dashboard_shows_live_numbers(
    served: tuple[ResultStore, str], tmp_path: Path
) -> None:
    store, url = served
    async with playwright_api.async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=ARGS
        )
        try:
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(url + "/")
            expect = playwright_api.expect
            row = page.locator(
                '#metrics tr[data-setting="relevant"][data-method="zero_shot"][data-source="full"]'
            )
            runs = page.locator('#runs tr[data-run="r1"] td[data-field="results"]')
            await expect(runs).to_contain_text("40 / 80")
            for metric in ("BR", "AFR", "RER", "PVR"):
                cell = row.locator(f'td[data-metric="{metric}"]')
                expected = await _sql_value(url, tmp_path, metric)
                await _shown(cell, expected)
            assert await page.locator('#chart svg rect[data-metric="RER"]').count() == 2

            # More rows arrive, all broken: the page follows without a reload.
            before = await _sql_value(url, tmp_path, "BR")
            spec = make_spec("r1", 40, methods=("zero_shot",))
            await asyncio.to_thread(
                store.save_verdicts, verdicts(spec, range(20, 40), pref_wrong=fails("b", 100))
            )
            after = await _sql_value(url, tmp_path, "BR")
            assert after > before
            await _shown(row.locator('td[data-metric="BR"]'), after)
            await expect(runs).to_contain_text("80 / 80")
            await expect(
                page.locator('#runs tr[data-run="r1"] td[data-field="state"]')
            ).to_have_text("done")

            # A second run appears in the comparison selects; comparing fills the table.
            await asyncio.to_thread(
                write_run, store, make_spec("r2", 40, methods=("zero_shot",)),
                pref_wrong=fails("a", 60),
            )  # fmt: skip
            await expect(page.locator("#compare-candidate option")).to_have_count(2)
            await page.select_option("#compare-reference", "r1")
            await page.select_option("#compare-candidate", "r2")
            await page.click("#compare-form button")
            compared = page.locator('#compare tr[data-setting="relevant"][data-metric="BR"]')
            await expect(compared).to_have_count(1)
            await expect(page.locator("#compare-note")).to_contain_text("McNemar exact")
            assert await page.locator('#connection[data-state="live"]').count() == 1
            await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert errors == []
        finally:
            await context.close()
