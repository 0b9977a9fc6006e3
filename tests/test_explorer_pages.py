"""Every page the explorer serves equals the same page asked in SQL (ORDER BY row_id,
setting, method LIMIT OFFSET over perg_row_outcomes), whatever the filter and page size, also
after redeliveries that change outcomes and a run whose threshold changes: the pages are read
over the kept flags (perg_outcome_flags) with a seek on the row id, never over stale rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fixtures.live.runs import fails, make_spec, verdicts

from services.sink.live.rows import OUTCOMES, Page, QuestionBook, RowFilter, explore_rows
from services.sink.store import ResultStore

N_ROWS = 30
FILTERS = [
    RowFilter(),
    RowFilter(outcome="broken"),
    RowFilter(outcome="not_followed", setting="relevant"),
    RowFilter(method="cot", preference="preference 1"),
    RowFilter(subject="virology", outcome="repaired"),
]


def _sql_page(store: ResultStore, f: RowFilter) -> list[tuple[int, str, str]]:
    sql = (
        "SELECT row_id, setting, method FROM perg_row_outcomes WHERE run_id = 'r' "
        "AND ($setting IS NULL OR setting = $setting) AND ($method IS NULL OR method = $method) "
        "AND ($subject IS NULL OR category = $subject) "
        "AND ($preference IS NULL OR contains(preference, $preference)) "
        f"AND ({OUTCOMES[f.outcome]}) ORDER BY row_id, setting, method LIMIT $limit OFFSET $offset"
    )
    params = {name: getattr(f, name) for name in ("setting", "method", "subject", "preference")}
    params |= {"limit": f.page.size, "offset": f.page.offset}
    return store.con.execute(sql, params).fetchall()


def _every_page_equals_sql(store: ResultStore) -> int:
    questions, pages = QuestionBook(), 0
    for base in FILTERS:
        for size in (4, 25):
            number = 1
            while True:
                f = dataclasses.replace(base, page=Page(number, size))
                expected = _sql_page(store, f)
                if not expected:
                    break
                served = explore_rows(store.cursor(), "r", f, questions)
                assert [
                    (r["row_id"], r["setting"], r["method"]) for r in served["rows"]
                ] == expected
                number, pages = number + 1, pages + 1
    return pages


@pytest.mark.parametrize("threshold", [None, 5])
def test_every_page_equals_sql_after_changes(tmp_path: Path, threshold: int | None) -> None:
    store = ResultStore(tmp_path / "pages.duckdb")
    spec = make_spec("r", N_ROWS, methods=("zero_shot", "cot"))
    spec = dataclasses.replace(spec, dataset_path=str(tmp_path / "absent.jsonl"))
    store.save_run(spec)
    even, odd = range(0, N_ROWS, 2), range(1, N_ROWS, 2)
    store.save_verdicts(verdicts(spec, even, pref_wrong=fails("a", 30), unfollowed=fails("u", 30)))
    base_wrong = fails("b", 20, per_cell=False)
    store.save_verdicts(verdicts(spec, odd, base_wrong=base_wrong, pref_wrong=fails("a", 30)))
    assert _every_page_equals_sql(store) > 20
    # redelivered rows with other answers, and (maybe) a resubmitted spec's threshold
    store.save_verdicts(verdicts(spec, range(10, 40), pref_wrong=fails("c", 60)))
    if threshold is not None:
        store.save_run(dataclasses.replace(spec, followed_threshold=threshold))
    assert _every_page_equals_sql(store) > 20
    store.close()
