"""The DuckDB results store, owned by the sink process (DuckDB allows one writer process).

Every write is one transaction and an upsert on the record's idempotency key, so a redelivered
message never creates a second row and a reader never sees half a batch. Rows are built by
column name, one ``TypedDict`` per table of ``store.sql`` (``ROW_TYPES``), and inserted through
Arrow ``BY NAME``: the order of the columns in ``store.sql`` does not matter.

Reading, as a library (only the sink may open the file for writing)::

    store = ResultStore(Path("perg-results/perg.duckdb"), read_only=True)
    for status in run_statuses(store.cursor()):
        print(status.run_id, status.results_stored, "/", status.expected_results)
    store.cursor().sql("SELECT * FROM metrics_by_source WHERE source = 'full'").show()
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypedDict

import duckdb
import pyarrow as pa

from perg.metrics import create_metric_views
from schemas import (
    BASELINE_METHOD,
    BASELINE_REPEAT_METHOD,
    DeadLetter,
    Generation,
    Result,
    RunSpec,
    Verdict,
)

__all__ = [
    "ROW_TYPES",
    "ResultStore",
    "RunStatus",
    "run_statuses",
]

STORE_SQL = resources.files("perg").joinpath("store.sql").read_text(encoding="utf-8")


# -- one row type per table of store.sql (tests/test_store.py checks they match) ----------------


class RunRow(TypedDict):
    run_id: str
    created_at: datetime
    model: str
    model_url: str
    judge_model: str
    judge_url: str
    protocol: str
    protocol_sha256: str
    dataset_path: str
    dataset_sha256: str
    selection: str
    settings: list[str]
    methods: list[str]
    n_rows: int
    expected_results: int
    spec: str
    followed_threshold: int | None  # the run's protocol's judge threshold (followed = rating >= it)
    extractor: str  # rules, llm or lora
    decoding_profile: str


class Usage(TypedDict):
    """Model usage of one stored answer, summed over every call behind it."""

    tokens_in: int
    tokens_out: int
    latency_s: float
    retries: int


class BaselineRow(Usage):
    run_id: str
    row_id: int
    source: str
    category: str
    gold_option: str
    response: str | None
    answer: str | None
    extraction: str
    finish_reason: str | None
    stored_at: datetime
    extractor: str
    rules_answer: str | None  # the rules parser's letter, beside the run's extractor's


class ResultRow(Usage):
    run_id: str
    row_id: int
    setting: str | None
    method: str
    source: str
    category: str
    preference: str
    gold_option: str
    response: str | None
    answer: str | None
    extraction: str
    judge_rating: int | None
    judge_outcome: str | None
    judge_raw: str | None
    parse_fallback: bool
    parse_failure: bool
    finish_reason: str | None
    model_calls: int
    stored_at: datetime
    extractor: str
    rules_answer: str | None


class BaselineRepeatRow(TypedDict):
    """The second no-preference answer of a run with a noise floor (--repeat-baseline)."""

    run_id: str
    row_id: int
    response: str | None
    answer: str | None
    extraction: str
    rules_answer: str | None
    finish_reason: str | None
    stored_at: datetime


class ProgressRow(TypedDict):
    run_id: str
    row_id: int
    setting: str | None
    method: str
    stage: str
    retries: int
    seen_at: datetime


class DeadLetterRow(TypedDict):
    service: str
    topic: str
    partition: int
    offset: int
    reason: str
    original: bytes
    failed_at: datetime
    run_id: str | None
    row_id: int | None
    setting: str | None
    method: str | None
    stage: str | None
    original_size: int | None  # the failed message's size; ``original`` may be truncated
    original_sha256: str | None


ROW_TYPES: dict[str, type] = {
    "runs": RunRow,
    "baselines": BaselineRow,
    "results": ResultRow,
    "baseline_repeats": BaselineRepeatRow,
    "progress": ProgressRow,
    "dead_letters": DeadLetterRow,
}


@dataclass(frozen=True, slots=True)
class RunStatus:
    """Progress of one run, as ``perg status`` and ``GET /api/runs`` report it.

    ``expected_*`` come from the run's spec; ``generated``, ``aligned``, ``baselines_stored``
    and ``results_stored`` count what the sink has stored so far; ``retries`` sums the model
    call retries of the stored answers; ``dead_letters`` counts the run's failed messages;
    ``expected_repeats`` / ``repeats_stored`` count the second baselines of a noise-floor run.
    """

    run_id: str
    model: str
    protocol: str
    created_at: str  # ISO 8601, UTC
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
    expected_repeats: int = 0  # repeated baselines of a run with a noise floor
    repeats_stored: int = 0

    @property
    def done(self) -> bool:
        """Every expected result and baseline is stored."""
        return (
            self.results_stored >= self.expected_results
            and self.baselines_stored >= self.n_rows
            and self.repeats_stored >= self.expected_repeats
        )

    def as_dict(self) -> dict[str, Any]:
        """The fields and ``done``, JSON-ready."""
        return {**dataclasses.asdict(self), "done": self.done}


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _usage(verdict: Verdict) -> tuple[Usage, int]:
    """The usage of every call behind a verdict, and how many calls there were (one pass:
    the sink's hot path)."""
    tokens_in = tokens_out = retries = n_calls = 0
    latency_s = 0.0
    for calls in (verdict.generation.calls, verdict.calls):
        for c in calls:
            tokens_in += c.tokens_in or 0
            tokens_out += c.tokens_out or 0
            latency_s += c.latency_s
            retries += c.attempts - 1
            n_calls += 1
    usage = Usage(tokens_in=tokens_in, tokens_out=tokens_out, latency_s=latency_s, retries=retries)
    return usage, n_calls


def _finish_reason(generation: Generation) -> str | None:
    """The finish reason of the last call of the generation's own stage."""
    stage = generation.stage
    for c in reversed(generation.calls):
        if c.stage == stage:
            return c.finish_reason
    return None


def _baseline_row(verdict: Verdict, now: datetime) -> BaselineRow:
    g, item = verdict.generation, verdict.generation.item
    usage, _ = _usage(verdict)
    return BaselineRow(
        run_id=g.context.run_id,
        row_id=item.row_id,
        source=item.source,
        category=item.category,
        gold_option=item.gold_option,
        response=g.response,
        answer=verdict.answer,
        extraction=verdict.extraction,
        finish_reason=_finish_reason(g),
        stored_at=now,
        extractor=verdict.extractor,
        rules_answer=verdict.rules_answer,
        **usage,
    )


def _repeat_row(verdict: Verdict, now: datetime) -> BaselineRepeatRow:
    g = verdict.generation
    return BaselineRepeatRow(
        run_id=g.context.run_id,
        row_id=g.item.row_id,
        response=g.response,
        answer=verdict.answer,
        extraction=verdict.extraction,
        rules_answer=verdict.rules_answer,
        finish_reason=_finish_reason(g),
        stored_at=now,
    )


def _result_row(verdict: Verdict, now: datetime) -> ResultRow:
    g, item = verdict.generation, verdict.generation.item
    usage, n_calls = _usage(verdict)
    return ResultRow(
        run_id=g.context.run_id,
        row_id=item.row_id,
        setting=g.setting,
        method=g.method,
        source=item.source,
        category=item.category,
        preference=item.preference,
        gold_option=item.gold_option,
        response=g.response,
        answer=verdict.answer,
        extraction=verdict.extraction,
        judge_rating=verdict.judge_rating,
        judge_outcome=verdict.judge_outcome,
        judge_raw=verdict.judge_raw,
        parse_fallback=g.parse_fallback,
        parse_failure=g.parse_failure,
        finish_reason=_finish_reason(g),
        model_calls=n_calls,
        stored_at=now,
        extractor=verdict.extractor,
        rules_answer=verdict.rules_answer,
        **usage,
    )


class ResultStore:
    """The results database: the tables and views of ``store.sql`` and ``metrics.sql``.

    ``ResultStore(path)`` opens (and creates) it for writing: only the sink does that, as
    DuckDB allows one writer process. ``read_only=True`` opens an existing file for reading,
    which fails while a writer holds it: read through the sink's API then.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(path), read_only=read_only)
        if not read_only:
            self.con.execute(STORE_SQL)
            create_metric_views(self.con)

    def close(self) -> None:
        """Close the database (every cursor with it)."""
        self.con.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own to the same database, for one reader thread."""
        return self.con.cursor()

    # -- writes (sink only) -------------------------------------------------------------

    def save_run(self, spec: RunSpec) -> None:
        """Upsert a run's spec (a resubmitted spec replaces the stored one)."""
        ctx = spec.context
        row = RunRow(
            run_id=ctx.run_id,
            created_at=datetime.fromisoformat(spec.created_at).astimezone(UTC).replace(tzinfo=None),
            model=ctx.model.model,
            model_url=ctx.model.base_url,
            judge_model=ctx.judge.model,
            judge_url=ctx.judge.base_url,
            protocol=ctx.protocol,
            protocol_sha256=ctx.protocol_sha256,
            dataset_path=spec.dataset_path,
            dataset_sha256=spec.dataset_sha256,
            selection=spec.selection,
            settings=list(spec.settings),
            methods=list(spec.methods),
            n_rows=len(spec.row_ids),
            expected_results=spec.expected_results,
            spec=spec.encode().decode(),
            followed_threshold=spec.followed_threshold,
            extractor=ctx.extractor,
            decoding_profile=ctx.decoding.profile,
        )
        with self._transaction() as con:
            _upsert(con, "runs", [row])

    def save_verdicts(self, verdicts: Sequence[Verdict]) -> list[Result]:
        """Upsert baselines and results in one transaction; return the stored rows."""
        now = _now()
        stored_at = now.isoformat()
        baselines: list[BaselineRow] = []
        repeats: list[BaselineRepeatRow] = []
        results: list[ResultRow] = []
        stored: list[Result] = []
        for v in verdicts:
            g, item = v.generation, v.generation.item
            if g.method == BASELINE_METHOD:
                baselines.append(_baseline_row(v, now))
            elif g.method == BASELINE_REPEAT_METHOD:
                repeats.append(_repeat_row(v, now))
                continue  # not a result row: no change-feed record
            else:
                results.append(_result_row(v, now))
            stored.append(
                Result(
                    run_id=g.context.run_id,
                    row_id=item.row_id,
                    setting=g.setting,
                    method=g.method,
                    answer=v.answer,
                    correct=v.answer == item.gold_option,
                    judge_outcome=v.judge_outcome,
                    stored_at=stored_at,
                )
            )
        with self._transaction() as con:
            _upsert(con, "baselines", baselines)
            _upsert(con, "results", results)
            _upsert(con, "baseline_repeats", repeats)
        return stored

    def save_progress(self, generations: Sequence[Generation]) -> None:
        """Upsert one progress row per generation (its run, row, setting, method and stage)."""
        now = _now()
        rows = [
            ProgressRow(
                run_id=g.context.run_id,
                row_id=g.item.row_id,
                setting=g.setting,
                method=g.method,
                stage=g.stage,
                retries=sum(c.attempts - 1 for c in g.calls),
                seen_at=now,
            )
            for g in generations
        ]
        with self._transaction() as con:
            _upsert(con, "progress", rows)

    def save_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Upsert dead letters, keyed by where the failed message was (topic, partition, offset)."""
        rows = [
            DeadLetterRow(
                service=d.service,
                topic=d.topic,
                partition=d.partition,
                offset=d.offset,
                reason=d.reason,
                original=base64.b64decode(d.original_b64),
                failed_at=datetime.fromisoformat(d.failed_at),
                run_id=d.run_id,
                row_id=d.row_id,
                setting=d.setting,
                method=d.method,
                stage=d.stage,
                original_size=d.original_size,
                original_sha256=d.original_sha256,
            )
            for d in letters
        ]
        with self._transaction() as con:
            _upsert(con, "dead_letters", rows)

    def _transaction(self) -> _Transaction:
        return _Transaction(self.con)


def _upsert(con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[Any]) -> None:
    """``INSERT OR REPLACE`` many rows (TypedDicts of ``table``) at once, by column name,
    through Arrow (executemany is ~100x slower). The rows are turned into Arrow columns
    directly: ``Table.from_pylist`` reads them row by row and is ~3x slower."""
    if not rows:
        return
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    con.register("incoming_rows", pa.Table.from_pydict(columns))
    try:
        con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM incoming_rows")
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


def run_statuses(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> list[RunStatus]:
    """The status of one run (``run_id``), or of every stored run oldest first; ``con`` is a
    connection to the store, e.g. ``ResultStore(path, read_only=True).cursor()``."""
    rows = con.execute(_STATUS_SQL, [run_id, run_id]).fetchall()
    return [RunStatus(*row) for row in rows]
