"""The DuckDB results store, owned by the sink process (DuckDB allows one writer process).

Every write is one transaction and an upsert on the record's idempotency key, so a redelivered
message never creates a second row and a reader never sees half a batch.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from perg.metrics import compute_metrics, create_metric_views
from schemas import BASELINE_METHOD, DeadLetter, Generation, Result, RunSpec, Verdict

STORE_SQL = resources.files("perg").joinpath("store.sql").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class RunStatus:
    run_id: str
    model: str
    protocol: str
    created_at: str
    n_rows: int
    expected_results: int
    expected_generations: int
    expected_aligned: int
    generated: int
    aligned: int
    baselines_stored: int
    results_stored: int
    retries: int
    dead_letters: int

    @property
    def done(self) -> bool:
        return self.results_stored >= self.expected_results and self.baselines_stored >= self.n_rows

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "done": self.done}


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _usage(verdict: Verdict) -> tuple[int, int, float, int, int]:
    calls = [*verdict.generation.calls, *verdict.calls]
    return (
        sum(c.tokens_in or 0 for c in calls),
        sum(c.tokens_out or 0 for c in calls),
        sum(c.latency_s for c in calls),
        len(calls),
        sum(c.attempts - 1 for c in calls),
    )


class ResultStore:
    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(path), read_only=read_only)
        if not read_only:
            self.con.execute(STORE_SQL)
            create_metric_views(self.con)

    def close(self) -> None:
        self.con.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own to the same database, for one reader thread."""
        return self.con.cursor()

    # -- writes (sink only) -------------------------------------------------------------

    def save_run(self, spec: RunSpec) -> None:
        ctx = spec.context
        self.con.execute(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ctx.run_id,
                datetime.fromisoformat(spec.created_at).astimezone(UTC).replace(tzinfo=None),
                ctx.model.model,
                ctx.model.base_url,
                ctx.judge.model,
                ctx.judge.base_url,
                ctx.protocol,
                ctx.protocol_sha256,
                spec.dataset_path,
                spec.dataset_sha256,
                spec.selection,
                list(spec.settings),
                list(spec.methods),
                len(spec.row_ids),
                spec.expected_results,
                spec.encode().decode(),
            ],
        )

    def save_verdicts(self, verdicts: Sequence[Verdict]) -> list[Result]:
        """Upsert baselines and results in one transaction; return the stored rows."""
        now = _now()
        baselines, results, stored = [], [], []
        for v in verdicts:
            g, item = v.generation, v.generation.item
            tokens_in, tokens_out, latency, n_calls, retries = _usage(v)
            finish = next((c.finish_reason for c in reversed(g.calls) if c.stage == g.stage), None)
            if g.method == BASELINE_METHOD:
                baselines.append(
                    [g.context.run_id, item.row_id, item.source, item.category, item.gold_option,
                     g.response, v.answer, v.extraction, finish, tokens_in, tokens_out, latency,
                     retries, now]
                )  # fmt: skip
            else:
                results.append(
                    [g.context.run_id, item.row_id, g.setting, g.method, item.source,
                     item.category, item.preference, item.gold_option, g.response, v.answer,
                     v.extraction, v.judge_rating, v.judge_outcome, v.judge_raw, g.parse_fallback,
                     g.parse_failure, finish, tokens_in, tokens_out, latency, n_calls, retries,
                     now]
                )  # fmt: skip
            stored.append(
                Result(
                    run_id=g.context.run_id,
                    row_id=item.row_id,
                    setting=g.setting,
                    method=g.method,
                    answer=v.answer,
                    correct=v.answer == item.gold_option,
                    judge_outcome=v.judge_outcome,
                    stored_at=now.isoformat(),
                )
            )
        with self._transaction() as con:
            _upsert(con, "baselines", baselines)
            _upsert(con, "results", results)
        return stored

    def save_progress(self, generations: Sequence[Generation]) -> None:
        now = _now()
        rows = [
            [g.context.run_id, g.item.row_id, g.setting, g.method, g.stage,
             sum(c.attempts - 1 for c in g.calls), now]
            for g in generations
        ]  # fmt: skip
        with self._transaction() as con:
            _upsert(con, "progress", rows)

    def save_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        rows = [
            [d.service, d.topic, d.partition, d.offset, d.reason,
             base64.b64decode(d.original_b64), datetime.fromisoformat(d.failed_at), d.run_id,
             d.row_id, d.setting, d.method, d.stage, d.original_size, d.original_sha256]
            for d in letters
        ]  # fmt: skip
        with self._transaction() as con:
            _upsert(con, "dead_letters", rows)

    def _transaction(self) -> _Transaction:
        return _Transaction(self.con)

    # -- reads ----------------------------------------------------------------------------

    def run_statuses(self, run_id: str | None = None) -> list[RunStatus]:
        return run_statuses(self.cursor(), run_id)

    def metrics(self, run_id: str | None = None) -> list[dict[str, object]]:
        return compute_metrics(self.cursor(), run_id)


def _upsert(con: duckdb.DuckDBPyConnection, table: str, rows: list[list[Any]]) -> None:
    """``INSERT OR REPLACE`` many rows at once, through Arrow (executemany is ~100x slower)."""
    if not rows:
        return
    columns = [name for (name,) in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index",
        [table],
    ).fetchall()]  # fmt: skip
    incoming = pa.table({name: [row[i] for row in rows] for i, name in enumerate(columns)})
    con.register("incoming_rows", incoming)
    try:
        con.execute(f"INSERT OR REPLACE INTO {table} SELECT * FROM incoming_rows")
    finally:
        con.unregister("incoming_rows")


class _Transaction:
    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        self.con.execute("BEGIN TRANSACTION")
        return self.con

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")


_STATUS_SQL = """
SELECT
    r.run_id, r.model, r.protocol, strftime(r.created_at, '%Y-%m-%dT%H:%M:%SZ'),
    r.n_rows, r.expected_results,
    r.n_rows + r.n_rows * len(r.settings)
        * len(list_filter(r.methods, lambda m: m <> 'pref_aligner')) AS expected_generations,
    CASE WHEN list_contains(r.methods, 'pref_aligner') THEN r.n_rows * len(r.settings) ELSE 0 END,
    (SELECT count(*) FROM progress p WHERE p.run_id = r.run_id AND p.stage <> 'aligned'),
    (SELECT count(*) FROM progress p WHERE p.run_id = r.run_id AND p.stage = 'aligned'),
    (SELECT count(*) FROM baselines b WHERE b.run_id = r.run_id),
    (SELECT count(*) FROM results s WHERE s.run_id = r.run_id),
    coalesce((SELECT sum(retries) FROM baselines b WHERE b.run_id = r.run_id), 0)
        + coalesce((SELECT sum(retries) FROM results s WHERE s.run_id = r.run_id), 0),
    (SELECT count(*) FROM dead_letters d WHERE d.run_id = r.run_id)
FROM runs r
WHERE ? IS NULL OR r.run_id = ?
ORDER BY r.created_at
"""


def run_statuses(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> list[RunStatus]:
    rows = con.execute(_STATUS_SQL, [run_id, run_id]).fetchall()
    return [RunStatus(*row) for row in rows]


def spec_of(con: duckdb.DuckDBPyConnection, run_id: str) -> RunSpec | None:
    row = con.execute("SELECT spec FROM runs WHERE run_id = ?", [run_id]).fetchone()
    return RunSpec.decode(orjson.dumps(orjson.loads(row[0]))) if row else None
