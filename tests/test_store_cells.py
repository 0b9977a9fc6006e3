"""The metric cells the store keeps (TABLE perg_cells) equal the cells counted from scratch
(view perg_cell_counts), and its kept outcome flags the flags of every outcome, after any
sequence of writes the sink can see: results before their row's baseline, redeliveries that
change a row or move it to another cell, duplicates inside a batch, baseline repeats, the
run's row arriving late or changing its threshold, progress and dead letters, a transaction
that fails half-way, and reopening the store."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from fixtures.live.runs import make_spec
from hypothesis import given, settings
from hypothesis import strategies as st

from perg.dataset import Item
from perg.metrics import compute_metrics, create_metric_views
from schemas import CallRecord, DeadLetter, Generation, RunSpec, Verdict
from services.sink.store import ResultStore, run_statuses
from services.sink.store import database as store_module
from services.sink.store.cells import CELLS_VERSION

RUNS = ("r1", "r2")
TQA, MMLU = "truthfulqa/truthful_qa", "cais/mmlu"
SPECS = {
    run: make_spec(run, 4, settings=("relevant", "irrelevant"), methods=("zero_shot", "cot"))
    for run in RUNS
}


def cells(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple[Any, ...]]:
    return con.execute(f"SELECT * FROM {relation} ORDER BY ALL").fetchall()


# run_statuses' query as first written, a correlated subquery per count: the reference.
STATUSES_BY_SUBQUERIES = """
SELECT
    r.run_id, r.model, r.protocol, strftime(r.created_at, '%Y-%m-%dT%H:%M:%SZ'),
    r.n_rows, r.expected_results,
    r.n_rows + r.n_rows * len(r.settings)
        * len(list_filter(r.methods, lambda m: m <> 'pref_aligner')) AS expected_generations,
    CASE WHEN list_contains(r.methods, 'pref_aligner') THEN r.n_rows * len(r.settings) ELSE 0 END,
    (SELECT count(*) FROM progress p WHERE p.run_id = r.run_id AND p.stage <> 'aligned'
        AND p.method <> 'baseline_repeat'),
    (SELECT count(*) FROM progress p WHERE p.run_id = r.run_id AND p.stage = 'aligned'),
    (SELECT count(*) FROM baselines b WHERE b.run_id = r.run_id),
    (SELECT count(*) FROM results s WHERE s.run_id = r.run_id),
    coalesce((SELECT sum(retries) FROM baselines b WHERE b.run_id = r.run_id), 0)
        + coalesce((SELECT sum(retries) FROM results s WHERE s.run_id = r.run_id), 0),
    (SELECT count(*) FROM dead_letters d WHERE d.run_id = r.run_id),
    CASE WHEN coalesce(r.spec->>'$.context.repeat_baseline' = 'true', false)
        THEN r.n_rows ELSE 0 END,
    (SELECT count(*) FROM baseline_repeats x WHERE x.run_id = r.run_id)
FROM runs r
WHERE ? IS NULL OR r.run_id = ?
ORDER BY r.created_at
"""


def assert_cells_exact(store: ResultStore) -> None:
    """The kept cells are the cells counted from every outcome, and the kept metric values
    the values computed from them."""
    kept = cells(store.con, "perg_cells")
    assert kept == cells(store.con, "perg_cell_counts")
    assert all(row[7] > 0 for row in kept)  # n_rows: no empty cell is kept
    values = cells(store.con, "perg_metric_values")
    assert values == cells(store.con, "perg_metric_values_of_cells")
    flags = cells(store.con, "perg_outcome_flags")
    assert flags == cells(store.con, "perg_outcome_flags_of_rows")
    reference = store.con.execute(STATUSES_BY_SUBQUERIES, [None, None]).fetchall()
    # the counts (the fields after them, cancelled, lineage and version, are not counted)
    counts = len(reference[0]) if reference else 0
    assert [dataclasses.astuple(s)[:counts] for s in run_statuses(store.con)] == reference
    for run in RUNS:
        expected = [row for row in reference if row[0] == run]
        statuses = run_statuses(store.con, run)
        assert [dataclasses.astuple(s)[:counts] for s in statuses] == expected


@dataclasses.dataclass(frozen=True)
class Answer:
    """One verdict the sink may receive: its key and what it says."""

    run: str
    row_id: int
    kind: str  # baseline, baseline_repeat or result
    setting: str
    method: str
    source: str
    category: str
    preference: str
    answer: str | None
    extraction: str
    rating: int | None
    fallback: bool
    failure: bool
    finish: str | None
    attempts: int = 1  # of the answer's model call: retries = attempts - 1

    def verdict(self) -> Verdict:
        spec = SPECS[self.run]
        item = Item(
            row_id=self.row_id,
            question="Q?",
            options=("x", "y"),
            gold_option="A",
            gold_answer="x",
            category=self.category,
            source=self.source,
            preference=self.preference,
        )
        baseline = self.kind != "result"
        stage = "baseline" if baseline else "answer"
        generation = Generation(
            context=spec.context,
            item=item,
            setting="none" if baseline else self.setting,  # type: ignore[arg-type]
            method=self.method if not baseline else self.kind,  # type: ignore[arg-type]
            stage=stage,
            response="r",
            baseline_response="b",
            calls=[
                CallRecord(
                    stage=stage,
                    latency_s=0.1,
                    attempts=self.attempts,
                    tokens_in=3,
                    tokens_out=2,
                    finish_reason=self.finish,
                )
            ],
            parse_fallback=self.fallback,
            parse_failure=self.failure,
        )
        rating = None if baseline else self.rating
        outcome = None if rating is None else ("followed" if rating >= 4 else "not_followed")
        return Verdict(
            generation=generation,
            answer=self.answer,
            extraction=self.extraction,  # type: ignore[arg-type]
            judge_rating=rating,
            judge_outcome=outcome,
            judge_raw=None,
            calls=[],
        )


ANSWERS = st.builds(
    Answer,
    run=st.sampled_from(RUNS),
    row_id=st.integers(0, 2),
    kind=st.sampled_from(["baseline", "baseline_repeat", "result", "result"]),
    setting=st.sampled_from(["relevant", "irrelevant"]),
    method=st.sampled_from(["zero_shot", "cot"]),
    source=st.sampled_from([TQA, MMLU]),  # a redelivery may move a row to another cell
    category=st.sampled_from(["", "virology"]),
    preference=st.sampled_from(["p1", "p2"]),
    answer=st.sampled_from(["A", "B", None]),
    extraction=st.sampled_from(["parsed", "unresolved"]),
    rating=st.one_of(st.none(), st.integers(1, 5)),
    fallback=st.booleans(),
    failure=st.booleans(),
    finish=st.sampled_from(["stop", "length", None]),
    attempts=st.integers(1, 3),
)

VERDICTS = st.tuples(st.just("verdicts"), st.lists(ANSWERS, min_size=1, max_size=16))
WRITES = st.one_of(
    VERDICTS,
    VERDICTS,
    VERDICTS,
    st.tuples(st.just("redelivery")),  # the last batch of verdicts again
    st.tuples(st.just("run"), st.sampled_from(RUNS), st.sampled_from([None, 2, 4, 5])),
    st.tuples(st.just("failing"), st.lists(ANSWERS, min_size=2, max_size=8)),
    st.tuples(st.just("progress"), st.lists(ANSWERS, min_size=1, max_size=4)),
    st.tuples(st.just("dead_letter"), st.sampled_from(RUNS), st.integers(0, 3)),
    st.tuples(st.just("reopen")),
)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def spec_with(run: str, threshold: int | None) -> RunSpec:
    return dataclasses.replace(SPECS[run], followed_threshold=threshold)


class Interrupted(Exception):
    """Stands for a crash inside a write transaction."""


def apply(
    store: ResultStore, write: tuple[Any, ...], last: list[Verdict], monkeypatch: pytest.MonkeyPatch
) -> None:
    kind = write[0]
    if kind == "verdicts":
        last[:] = [a.verdict() for a in write[1]]
        store.save_verdicts(last)
    elif kind == "redelivery":
        store.save_verdicts(last)
    elif kind == "run":
        store.save_run(spec_with(write[1], write[2]))
    elif kind == "failing":
        # the second table's upsert fails after the first one's rows are written
        upsert = store_module._upsert
        calls = []

        def failing(con: duckdb.DuckDBPyConnection, table: str, rows: Any) -> None:
            calls.append(table)
            if len(calls) > 1:
                raise Interrupted(table)
            upsert(con, table, rows)

        monkeypatch.setattr(store_module, "_upsert", failing)
        try:
            store.save_verdicts([a.verdict() for a in write[1]])
        except Interrupted:
            pass
        finally:
            monkeypatch.setattr(store_module, "_upsert", upsert)
    elif kind == "progress":
        store.save_progress([a.verdict().generation for a in write[1]])
    elif kind == "dead_letter":
        letter = DeadLetter("judge", "perg.generations", 0, write[2], "bad", "",
                            "2026-01-01T00:00:00", run_id=write[1], row_id=write[2])  # fmt: skip
        store.save_dead_letters([letter])


@settings(max_examples=100, deadline=None)
@given(writes=st.lists(WRITES, min_size=1, max_size=12))
def test_kept_cells_equal_cells_counted_from_scratch(
    writes: list[tuple[Any, ...]], workdir: Path
) -> None:
    path = Path(tempfile.mkdtemp(dir=workdir)) / "cells.duckdb"
    store = ResultStore(path)
    last: list[Verdict] = []
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            for write in writes:
                if write[0] == "reopen":
                    store.close()
                    store = ResultStore(path)
                else:
                    apply(store, write, last, monkeypatch)
                assert_cells_exact(store)
    finally:
        store.close()


def filled_store(path: Path) -> ResultStore:
    store = ResultStore(path)
    spec = spec_with("r1", 4)
    store.save_run(spec)
    verdicts = [
        answer(row, kind, method=method, source=MMLU if row % 2 else TQA,
               answer="A" if (row + i) % 3 else "B", rating=(row * 7 + i) % 6 or None)
        for row in range(4)
        for i, (kind, method) in enumerate(
            [("baseline", "zero_shot"), ("result", "zero_shot"), ("result", "cot")]
        )
    ]  # fmt: skip
    store.save_verdicts(verdicts)
    return store


def test_a_store_without_kept_tables_computes_them_on_open(tmp_path: Path) -> None:
    """A store made before perg_cells and perg_metric_values existed gets them computed when
    the sink opens it; the metrics read the same either way."""
    path = tmp_path / "old.duckdb"
    store = filled_store(path)
    expected = compute_metrics(store.cursor(), "r1")
    store.con.execute("DROP TABLE perg_cells")
    store.con.execute("DROP TABLE perg_metric_values")
    create_metric_views(store.con)  # the views of a store without the tables
    assert compute_metrics(store.cursor(), "r1") == expected  # over the outcomes
    store.close()
    store = ResultStore(path)
    assert_cells_exact(store)
    assert compute_metrics(store.cursor(), "r1") == expected
    kinds = store.con.execute(
        "SELECT table_type FROM information_schema.tables "
        "WHERE table_name IN ('perg_cells', 'perg_metric_values')"
    ).fetchall()
    assert kinds == [("BASE TABLE",), ("BASE TABLE",)]
    store.close()


def test_cells_of_another_sql_version_are_counted_again(tmp_path: Path) -> None:
    path = tmp_path / "stale.duckdb"
    store = filled_store(path)
    store.con.execute("UPDATE perg_cells SET n_qstar = n_qstar + 1")  # counts of other rules
    store.con.execute("UPDATE perg_metric_values SET BR = 0")
    store.con.execute("COMMENT ON TABLE perg_cells IS 'an older version'")
    store.close()
    store = ResultStore(path)
    assert_cells_exact(store)
    comments = store.con.execute(
        "SELECT comment FROM duckdb_tables() "
        "WHERE table_name IN ('perg_cells', 'perg_metric_values')"
    ).fetchall()
    assert comments == [(CELLS_VERSION,), (CELLS_VERSION,)]
    store.close()


def test_live_metrics_read_the_kept_tables(tmp_path: Path) -> None:
    """The store's metric views read its kept values, computed from its kept cells (the
    tables), not the outcomes."""
    store = filled_store(tmp_path / "live.duckdb")
    before = compute_metrics(store.cursor(), "r1")
    store.con.execute("UPDATE perg_cells SET n_rows = n_rows + 100")  # one cell per source
    assert compute_metrics(store.cursor(), "r1") == before  # the values are kept
    store.con.execute("DELETE FROM perg_metric_values")
    store.con.execute("INSERT INTO perg_metric_values SELECT * FROM perg_metric_values_of_cells")
    after = compute_metrics(store.cursor(), "r1")
    added = {TQA: 100, MMLU: 100, "full": 200}
    assert [r["n_rows"] + added[r["source"]] for r in before] == [r["n_rows"] for r in after]
    store.close()


def counts(store: ResultStore) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(setting, method) -> (n_rows, n_qstar, n_followed) summed over the kept cells."""
    rows = store.con.execute(
        "SELECT setting, method, sum(n_rows), sum(n_qstar), sum(n_followed) FROM perg_cells "
        "GROUP BY ALL"
    ).fetchall()
    return {(s, m): (n, q, f) for s, m, n, q, f in rows}


def answer(row_id: int, kind: str, **fields: Any) -> Verdict:
    base = Answer("r1", row_id, kind, "relevant", "zero_shot", TQA, "", "p1", "A", "parsed", 3,
                  False, False, "stop")  # fmt: skip
    return dataclasses.replace(base, **fields).verdict()


def test_each_kind_of_write_moves_the_kept_counts(tmp_path: Path) -> None:
    """The cases one by one, with the counts they must give."""
    store = ResultStore(tmp_path / "cases.duckdb")
    key = ("relevant", "zero_shot")
    store.save_verdicts([answer(0, "result")])  # before its row's baseline: no outcome yet
    assert counts(store) == {}
    store.save_verdicts([answer(0, "baseline")])  # the baseline completes the outcome
    assert counts(store) == {key: (1, 1, 0)}  # rating 3 < 4 (the judge's outcome stands in)
    store.save_run(spec_with("r1", 2))  # the run's threshold arrives: 3 >= 2 is followed
    assert counts(store) == {key: (1, 1, 1)}
    store.save_run(spec_with("r1", 5))  # a resubmitted spec changes it again
    assert counts(store) == {key: (1, 1, 0)}
    store.save_verdicts([answer(0, "result", rating=5)] * 2)  # a duplicate in the batch
    assert counts(store) == {key: (1, 1, 1)}
    store.save_verdicts([answer(0, "baseline", answer="B")])  # the row leaves Q*
    assert counts(store) == {key: (1, 0, 0)}
    store.save_verdicts([answer(0, "result", method="cot"), answer(1, "result")])
    assert counts(store) == {key: (1, 0, 0), ("relevant", "cot"): (1, 0, 0)}
    store.save_verdicts([answer(0, "result", preference="p2", rating=5)])  # moves cell
    assert store.con.execute("SELECT preference, n_rows FROM perg_cells WHERE method = "
                             "'zero_shot'").fetchall() == [("p2", 1)]  # fmt: skip
    store.save_verdicts([answer(0, "baseline"), answer(0, "baseline_repeat", answer="B")])
    noise = "SELECT sum(n_noise_qstar), sum(n_noise_broken) FROM perg_cells"
    assert store.con.execute(noise).fetchone() == (2, 2)  # row 0's two outcomes, repeat wrong
    store.save_verdicts([answer(0, "baseline_repeat")])  # the repeat redelivered, now right
    assert store.con.execute(noise).fetchone() == (2, 0)
    assert_cells_exact(store)
    store.close()
