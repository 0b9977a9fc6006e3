"""The per-row explorer and the changed rows in a real headless Chromium, against SQL.

Two stored runs over a small dataset file; the candidate's answers hold markup, scripts,
a 30,000-character text, right-to-left and combining Unicode. What the page shows (filtered
counts, one row's texts, the changed rows of the comparison) must equal the same question
asked in SQL, model text must stay text, and bad input in the URL must give a message on the
page (and a 4xx from the API), never a blank page. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fixtures.live.runs import fails, item, make_spec, verdicts
from test_dashboard_browser import ARGS, CHROMIUM, chromium_page, screenshot

from schemas import Verdict
from services.sink.live.api import create_app
from services.sink.store import ResultStore

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
playwright_api = pytest.importorskip("playwright.async_api")

N_ROWS = 40
HOSTILE = (
    '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    "<b>bold?</b> &amp; ' \" مرحبا بالعالم \u202eevil\u202c e\u0301\u0301\u0301 Z\u0338"
)
LONG = "long " * 6000  # 30,000 characters: the API sends the first 20,000


def _dataset(path: Path) -> tuple[str, str]:
    import hashlib

    lines = []
    for row_id in range(N_ROWS):
        it = item(row_id)
        question = f"{it.question} <i>{HOSTILE}</i>" if row_id == 3 else it.question
        lines.append(json.dumps({
            "question": question, "options": list(it.options), "gold_option": it.gold_option,
            "gold_answer": it.gold_answer, "category": it.category, "source": it.source,
            "preference": it.preference,
        }))  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def _hostile(v: Verdict) -> Verdict:
    g = v.generation
    if g.method == "baseline":
        return v
    text = HOSTILE if g.item.row_id % 2 else LONG
    return dataclasses.replace(
        v,
        generation=dataclasses.replace(g, response=text),
        judge_raw=f"<answer>1</answer>{HOSTILE}",
    )


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ResultStore, str]]:
    store = ResultStore(tmp_path / "perg.duckdb")
    path, sha = _dataset(tmp_path / "rows.jsonl")
    for run_id, broken in (("ref", 10), ("cand", 40)):
        spec = dataclasses.replace(
            make_spec(run_id, N_ROWS, methods=("zero_shot", "pref_aligner")),
            dataset_path=path, dataset_sha256=sha,
        )  # fmt: skip
        store.save_run(spec)
        rows = verdicts(spec, range(N_ROWS), base_wrong=fails("base", 20, per_cell=False),
                        pref_wrong=fails(run_id, broken), unfollowed=fails("f", 30))  # fmt: skip
        store.save_verdicts([_hostile(v) for v in rows] if run_id == "cand" else rows)
    runner = web.AppRunner(create_app(store, token=None, event_interval_s=0.5))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield store, f"http://127.0.0.1:{port}"
    await runner.cleanup()
    store.close()


def _sql(store: ResultStore, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with store.cursor() as con:
        return con.execute(sql, list(params)).fetchall()


async def test_explorer_and_changed_rows_match_sql(served: tuple[ResultStore, str]) -> None:
    store, url = served
    expect = playwright_api.expect
    async with chromium_page() as (page, errors):
        await page.goto(url + "/?run=cand&outcome=broken")
        note = page.locator("#explore-note")
        (broken,) = _sql(store, "SELECT count(*) FROM perg_row_outcomes WHERE run_id = 'cand' "
                         "AND base_correct AND NOT pref_correct")[0]  # fmt: skip
        await expect(note).to_have_attribute("data-total", str(broken))

        # Filter through the form, with the keyboard only.
        await page.focus("#explore-setting")
        await page.select_option("#explore-setting", "relevant")
        await page.select_option("#explore-method", "pref_aligner")
        await page.focus("#explore-outcome")
        await page.select_option("#explore-outcome", "not_followed")
        await page.focus("#explore-form button")
        await page.keyboard.press("Enter")
        (unfollowed,) = _sql(store, "SELECT count(*) FROM perg_row_outcomes WHERE run_id = "
                             "'cand' AND setting = 'relevant' AND method = 'pref_aligner' "
                             "AND base_correct AND followed IS FALSE")[0]  # fmt: skip
        await expect(note).to_have_attribute("data-total", str(unfollowed))
        shown = page.locator("#explore-rows details.row")
        await expect(shown).to_have_count(min(unfollowed, 25))

        # One row's texts, exactly as stored; markup stays text, no script ran.
        first = shown.first
        row_id = int(await first.get_attribute("data-row") or "-1")
        await first.locator("summary").focus()
        await page.keyboard.press("Enter")
        response, raw, nopref = _sql(
            store,
            "SELECT r.response, r.judge_raw, b.response FROM results r JOIN baselines b "
            "USING (run_id, row_id) WHERE r.run_id = 'cand' AND r.row_id = ? "
            "AND setting = 'relevant' AND method = 'pref_aligner'",
            row_id,
        )[0]
        shown_response = await first.locator('[data-field="response"]').text_content()
        assert shown_response == response[:20000]
        assert await first.locator('[data-field="judge_raw"]').text_content() == raw
        assert await first.locator('[data-field="nopref_response"]').text_content() == nopref
        if len(response) > 20000:
            await expect(first).to_contain_text("first 20000 of 30000 characters")
        await expect(first.locator("ol.options li.gold")).to_contain_text("yes")
        await screenshot(page, "explorer-row")

        await page.goto(url + "/?run=cand&row_id=3&setting=relevant&method=zero_shot")
        row3 = page.locator("#explore-rows details.row").first
        await row3.locator("summary").click()
        question = await row3.locator('[data-field="question"]').text_content()
        assert question == f"Question 3? <i>{HOSTILE}</i>"
        assert await page.locator("#explore-rows img, #explore-rows script, "
                                  "#explore-rows b, #explore-rows i").count() == 0  # fmt: skip
        assert await page.evaluate("window.__pwned") is None
        await screenshot(page, "explorer-hostile")

        # What changed: the BR rows that broke only in the candidate.
        await page.select_option("#compare-reference", "ref")
        await page.select_option("#compare-candidate", "cand")
        await page.click("#compare-form button")
        cell = page.locator('#compare tr[data-setting="relevant"][data-method="zero_shot"]'
                            '[data-metric="BR"] td[data-field="broke"] button')  # fmt: skip
        expected = [r[0] for r in _sql(store, """
            SELECT a.row_id FROM perg_row_outcomes a JOIN perg_row_outcomes b
                USING (row_id, setting, method)
            WHERE a.run_id = 'ref' AND b.run_id = 'cand' AND setting = 'relevant'
                AND method = 'zero_shot' AND a.base_correct AND b.base_correct
                AND a.pref_correct AND NOT b.pref_correct ORDER BY row_id""")]  # fmt: skip
        assert expected, "the fixture must break some rows"
        await expect(cell).to_have_text(str(len(expected)))
        await cell.click()
        listed = page.locator("#changed-rows tbody tr")
        await expect(listed).to_have_count(len(expected))
        assert [int(r) for r in await listed.evaluate_all(
            "rows => rows.map(r => r.dataset.row)")] == expected  # fmt: skip
        await screenshot(page, "changed-rows")
        await listed.first.locator("button").click()
        await expect(note).to_have_attribute("data-total", "1")
        assert errors == []


BAD_URLS = {
    "/?run=nope": "unknown run 'nope'",
    "/?run=cand&page=99": "page 99 is past the last page",
    "/?run=cand&setting=bogus": "setting must be one of",
    "/?run=cand&page=-3": "page must be a whole number",
    "/?run=cand&row_id=999": "no rows of run 'cand' match",
    "/?run=cand&outcome=<script>": "outcome must be one of",
}


async def test_bad_input_gives_a_message(served: tuple[ResultStore, str]) -> None:
    _, url = served
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = await browser.new_page()
            for i, (path, message) in enumerate(BAD_URLS.items()):
                await page.goto(url + path)
                await playwright_api.expect(page.locator("#explore-error")).to_contain_text(message)
                if i == 0:
                    await screenshot(page, "bad-input")
        finally:
            await browser.close()


API_ERRORS = {
    "/api/runs/nope/rows": (404, "unknown run"),
    "/api/runs/cand/rows?page=0": (400, "page must be"),
    "/api/runs/cand/rows?page_size=1000": (400, "page_size must be"),
    "/api/runs/cand/rows?colour=red": (400, "unknown parameter 'colour'"),
    "/api/runs/cand/rows?preference=%01": (400, "control characters"),
    "/api/runs/cand/rows?outcome=dead_lettered": (404, "no rows"),
    "/api/runs/cand/rows?outcome=dead_lettered&source=cais/mmlu": (400, "dead-lettered"),
    "/api/runs/cand/rows?setting=relevant'%20OR%201=1--": (400, "setting must be one of"),
    "/api/runs/cand/facets?x=1": (400, "no parameters"),
    "/api/changed?reference=ref": (400, "give reference=RUN and candidate=RUN"),
    "/api/changed?reference=ref&candidate=nope": (404, "unknown run 'nope'"),
    "/api/changed?reference=ref&candidate=cand&metric=PVR": (400, "metric must be one of"),
    "/api/changed?reference=ref&candidate=cand&page=500": (404, "past the last page"),
}


async def test_api_refuses_bad_parameters(served: tuple[ResultStore, str]) -> None:
    _, url = served
    async with aiohttp.ClientSession(url) as http:
        for path, (status, message) in API_ERRORS.items():
            async with http.get(path) as response:
                body = await response.json()
                assert (response.status, message in body["error"]) == (status, True), path
        async with http.get("/") as response:
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
