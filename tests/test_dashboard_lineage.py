"""The lineage view in a real headless Chromium, against SQL.

One lineage of three versions written through the store as the sink writes them: v1
accepted, v2 gated (fail) against it, v3 gated (pass) and with a repeated baseline (noise
floor); a run outside the lineage. Every point of every chart (value, interval, accepted mark,
verdict) must equal the same question asked of view lineage_history in SQL; Enter on a point
opens its run; an unknown or malformed lineage in the
URL gives a message on the page and a 4xx from the API. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fixtures.live.runs import fails, make_spec, verdicts, write_run
from test_dashboard_browser import CHROMIUM, chromium_page, screenshot, serving

from schemas import BASELINE_REPEAT_METHOD, Acceptance, GateDecision, RunSpec
from services.sink.store import ResultStore

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
playwright_api = pytest.importorskip("playwright.async_api")

ROWS = 40
VERSIONS = ("v1", "v2", "v3")
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _spec(run_id: str, version: str, day: int) -> RunSpec:
    spec = make_spec(run_id, ROWS, methods=("zero_shot", "cot"))
    return dataclasses.replace(spec, lineage="chat-prod", version_label=version,
                               created_at=(T0 + timedelta(days=day)).isoformat())  # fmt: skip


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ResultStore, str]]:
    store = ResultStore(tmp_path / "perg.duckdb")
    base_wrong = fails("nopref", 20, per_cell=False)
    for day, (version, broken) in enumerate(zip(VERSIONS, (10, 35, 15), strict=True)):
        spec = _spec(f"run-{day + 1}", version, day)
        write_run(store, spec, base_wrong=base_wrong, pref_wrong=fails(f"p{day}", broken),
                  unfollowed=fails("f", 20 + day))  # fmt: skip
    repeats = [
        dataclasses.replace(v, generation=dataclasses.replace(
            v.generation, method=BASELINE_REPEAT_METHOD), answer="B" if row % 5 == 0 else "A")
        for row, v in enumerate(verdicts(_spec("run-3", "v3", 2), range(ROWS)))
        if v.generation.method == "baseline"
    ]  # fmt: skip
    store.save_verdicts(repeats)
    write_run(store, make_spec("loose", 10))
    store.save_acceptances([Acceptance(run_id="run-1", lineage="chat-prod",
                                       accepted_at=T0.isoformat(), note="first")])  # fmt: skip
    decided = (T0 + timedelta(days=3)).isoformat()
    store.save_gate_decisions([
        GateDecision("run-2", "run-1", False, decided, lineage="chat-prod", summary="FAIL"),
        GateDecision("run-3", "run-1", True, decided, lineage="chat-prod", summary="PASS"),
    ])  # fmt: skip
    async with serving(store, event_interval_s=0.5) as url:
        yield store, url
    store.close()


def _expected(store: ResultStore, metric: str) -> list[dict[str, Any]]:
    """The chart's points of ``metric`` asked in SQL."""
    lo, hi = (f"{metric}_lo", f"{metric}_hi") if metric != "PVR" else ("NULL", "NULL")
    with store.cursor() as con:
        rows = con.execute(
            f"SELECT run_id, {metric}, {lo}, {hi}, accepted, coalesce(verdict, '') "
            "FROM lineage_history WHERE lineage = 'chat-prod' ORDER BY position"
        ).fetchall()
    return [{"run": r[0], "value": r[1], "lo": r[2], "hi": r[3], "accepted": r[4],
             "verdict": r[5]} for r in rows]  # fmt: skip


async def _points(page: Any, metric: str) -> list[dict[str, Any]]:
    found = await page.eval_on_selector_all(
        f'svg[data-metric="{metric}"] g.point',
        "gs => gs.map(g => ({run: g.dataset.run, value: g.dataset.value, lo: g.dataset.lo,"
        " hi: g.dataset.hi, accepted: g.dataset.accepted, verdict: g.dataset.verdict,"
        " diamond: g.querySelector('path.accepted') !== null}))",
    )
    return [{"run": p["run"], "value": float(p["value"]),
             "lo": float(p["lo"]) if p["lo"] else None, "hi": float(p["hi"]) if p["hi"] else None,
             "accepted": p["accepted"] == "true" and p["diamond"],
             "verdict": p["verdict"]} for p in found]  # fmt: skip


async def test_lineage_chart_points_equal_sql(served: tuple[ResultStore, str]) -> None:
    store, url = served
    expect = playwright_api.expect
    async with chromium_page() as (page, errors):
        await page.goto(url + "/?lineage=chat-prod")
        await expect(page.locator('svg[data-metric="BR"] g.point')).to_have_count(3)
        for metric in ("BR", "AFR", "RER", "PVR"):
            expected = _expected(store, metric)
            assert await _points(page, metric) == expected, metric
        assert [p["accepted"] for p in _expected(store, "BR")] == [True, False, False]
        assert [p["verdict"] for p in _expected(store, "BR")] == ["", "fail", "pass"]
        # the noise floor: one hatched band, v3's, equal to SQL
        with store.cursor() as con:
            ((noise_lo, noise_hi),) = con.execute(
                "SELECT noise_BR_lo, noise_BR_hi FROM lineage_history WHERE noise_BR IS NOT NULL"
            ).fetchall()
        await expect(page.locator('svg[data-metric="BR"] .band-noise')).to_have_count(1)
        noise = page.locator('#lineage-table tr[data-run="run-3"] [data-metric="noise_BR"]')
        await expect(noise).to_contain_text(f"[{noise_lo:.1f}\u2013{noise_hi:.1f}]")
        # verdicts and acceptance as words, not colour only
        await expect(page.locator('svg[data-metric="BR"] text.verdict')).to_have_text(
            ["accepted", "✗ fail", "✓ pass"]
        )
        await screenshot(page, "lineage")

        # the keyboard: Tab to v2's BR point, Enter opens its run's rows
        point = page.locator('svg[data-metric="BR"] g.point[data-run="run-2"]')
        await point.focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("#explore-run")).to_have_value("run-2")
        with store.cursor() as con:
            ((n_rows,),) = con.execute(
                "SELECT count(*) FROM perg_row_outcomes WHERE run_id = 'run-2'"
            ).fetchall()
        await expect(page.locator("#explore-note")).to_have_attribute("data-total", str(n_rows))
        await expect(page.locator("#metric-run")).to_have_value("run-2")
        await screenshot(page, "lineage-opened-run")

        # an unknown lineage in the URL: a message on the page, not a blank one
        await page.goto(url + "/?lineage=nope")
        await expect(page.locator("#lineage-error")).to_contain_text("unknown lineage 'nope'")
        await page.goto(url + "/?lineage=two%20words")
        await expect(page.locator("#lineage-error")).to_contain_text("not a valid name")
        await screenshot(page, "lineage-unknown")
        assert errors == []


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/api/lineages/nope", 404, "unknown lineage 'nope'"),
        ("/api/lineages/two%20words", 400, "not a valid name"),
        ("/api/lineages/" + "x" * 300, 400, "lineage"),
        ("/api/lineages/chat-prod?x=1", 400, "takes no parameters"),
        ("/api/lineages?lineage=chat-prod", 400, "takes no parameters"),
    ],
)
async def test_bad_lineage_requests_get_a_clear_4xx(
    served: tuple[ResultStore, str], path: str, status: int, message: str
) -> None:
    _, url = served
    async with aiohttp.ClientSession() as http, http.get(url + path) as response:
        assert response.status == status
        assert message in (await response.json())["error"]


async def test_lineage_list_counts_versions(served: tuple[ResultStore, str]) -> None:
    _, url = served
    async with aiohttp.ClientSession() as http, http.get(url + "/api/lineages") as response:
        assert await response.json() == [
            {"lineage": "chat-prod", "versions": 3, "accepted": 1, "latest_run_id": "run-3"}
        ]
