"""The DuckDB results store, owned by the sink process (DuckDB allows one writer process).

Every write is one transaction and an upsert on the record's idempotency key, so a redelivered
message never creates a second row and a reader never sees half a batch. Rows are built by
column name, one ``TypedDict`` per table of ``store.sql`` (``ROW_TYPES``), and inserted through
Arrow ``BY NAME``: the order of the columns in ``store.sql`` does not matter.

The same transaction keeps three tables of metrics.sql up to date, ``perg_cells`` (the counts
of every finest cell), ``perg_metric_values`` (the metric values of those cells) and
``perg_outcome_flags`` (every outcome's keys and verdicts without its texts), so the metric
views read a few hundred rows however many results are stored and the explorer pages over
narrow columns, and both always agree with the rows (see "kept tables" below).

Reading, as a library (only the sink may open the file for writing)::

    store = ResultStore(Path("perg-results/perg.duckdb"), read_only=True)
    for status in run_statuses(store.cursor()):
        print(status.run_id, status.results_stored, "/", status.expected_results)
    store.cursor().sql("SELECT * FROM metrics_by_source WHERE source = 'full'").show()
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypedDict, get_args, get_type_hints

import duckdb
import pyarrow as pa

from perg.metrics import create_metric_views, metrics_sql
from schemas import (
    BASELINE_METHOD,
    BASELINE_REPEAT_METHOD,
    Acceptance,
    DeadLetter,
    GateDecision,
    Generation,
    Result,
    RunCancel,
    RunSpec,
    Verdict,
)

__all__ = [
    "ROW_TYPES",
    "ResultStore",
    "RunStatus",
    "run_statuses",
]

_HERE = resources.files(__name__)
STORE_SQL = _HERE.joinpath("store.sql").read_text(encoding="utf-8")
# The lineage views (run_states, lineage_history): after the metric views they read.
LINEAGE_SQL = _HERE.joinpath("lineage.sql").read_text(encoding="utf-8")


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
    lineage: str | None  # perg submit --lineage
    version: str | None  # perg submit --version
    shuffle_seed: int | None  # the seed of the work's order


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
    thinking: str | None  # a thinking model's thinking, apart from the answer


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
    thinking: str | None
    rewrite_read: str | None  # how a self-critic / aligner JSON rewrite was read


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


class RunCancelRow(TypedDict):
    run_id: str
    cancelled_at: datetime
    reason: str


class AcceptanceRow(TypedDict):
    run_id: str
    lineage: str
    accepted_at: datetime
    note: str


class GateDecisionRow(TypedDict):
    candidate_run_id: str
    reference_run_id: str
    lineage: str | None
    passed: bool
    decided_at: datetime
    summary: str


ROW_TYPES: dict[str, type] = {
    "runs": RunRow,
    "baselines": BaselineRow,
    "results": ResultRow,
    "baseline_repeats": BaselineRepeatRow,
    "progress": ProgressRow,
    "dead_letters": DeadLetterRow,
    "run_cancels": RunCancelRow,
    "acceptances": AcceptanceRow,
    "gate_decisions": GateDecisionRow,
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
    cancelled: bool = False  # perg cancel (or the sequential gate) stopped it
    lineage: str | None = None
    version: str | None = None

    @property
    def done(self) -> bool:
        """Every expected result and baseline is stored."""
        return (
            self.results_stored >= self.expected_results
            and self.baselines_stored >= self.n_rows
            and self.repeats_stored >= self.expected_repeats
        )

    @property
    def state(self) -> str:
        """``done``, else ``cancelled`` (its stored results are partial), else ``running``."""
        return "done" if self.done else "cancelled" if self.cancelled else "running"

    def as_dict(self) -> dict[str, Any]:
        """The fields, ``done``, ``state`` and ``partial`` (not done), JSON-ready."""
        return {
            **dataclasses.asdict(self),
            "done": self.done,
            "state": self.state,
            "partial": not self.done,
        }


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _utc(timestamp: str) -> datetime:
    """An ISO 8601 time stamp as a naive UTC datetime (the store's TIMESTAMP columns)."""
    return datetime.fromisoformat(timestamp).astimezone(UTC).replace(tzinfo=None)


def _usage_columns(verdicts: Sequence[Verdict]) -> list[list[Any]]:
    """tokens_in, tokens_out, latency_s and retries of each verdict, summed over every call
    behind it, and how many calls there were: five columns, one pass (the sink's hot path)."""
    tokens_in: list[int] = []
    tokens_out: list[int] = []
    latencies: list[float] = []
    retries: list[int] = []
    n_calls: list[int] = []
    for verdict in verdicts:
        t_in = t_out = n_retries = n = 0
        latency_s = 0.0
        for calls in (verdict.generation.calls, verdict.calls):
            for c in calls:
                t_in += c.tokens_in or 0
                t_out += c.tokens_out or 0
                latency_s += c.latency_s
                n_retries += c.attempts - 1
                n += 1
        tokens_in.append(t_in)
        tokens_out.append(t_out)
        latencies.append(latency_s)
        retries.append(n_retries)
        n_calls.append(n)
    return [tokens_in, tokens_out, latencies, retries, n_calls]


def _finish_reason(generation: Generation) -> str | None:
    """The finish reason of the last call of the generation's own stage."""
    stage = generation.stage
    for c in reversed(generation.calls):
        if c.stage == stage:
            return c.finish_reason
    return None


# The rows of the verdict tables are built column by column straight from the verdicts and
# turned into Arrow columns (the sink's hot path: a dict or a tuple per row costs time and
# garbage-collector passes). Each ``*_COLUMNS`` names the columns its function returns; with
# ``stored_at``, added for the whole batch, they are the columns of its table's row type
# (tests/test_store.py checks that).
BASELINE_COLUMNS = (
    "run_id", "row_id", "source", "category", "gold_option", "response", "answer",
    "extraction", "finish_reason", "extractor", "rules_answer", "thinking",
    "tokens_in", "tokens_out", "latency_s", "retries",
)  # fmt: skip


def _baseline_columns(verdicts: Sequence[Verdict]) -> list[list[Any]]:
    generations = [v.generation for v in verdicts]
    items = [g.item for g in generations]
    return [
        [g.context.run_id for g in generations],
        [i.row_id for i in items],
        [i.source for i in items],
        [i.category for i in items],
        [i.gold_option for i in items],
        [g.response for g in generations],
        [v.answer for v in verdicts],
        [v.extraction for v in verdicts],
        [_finish_reason(g) for g in generations],
        [v.extractor for v in verdicts],
        [v.rules_answer for v in verdicts],
        [g.thinking for g in generations],
        *_usage_columns(verdicts)[:4],
    ]


REPEAT_COLUMNS = (
    "run_id", "row_id", "response", "answer", "extraction", "rules_answer", "finish_reason",
)  # fmt: skip


def _repeat_columns(verdicts: Sequence[Verdict]) -> list[list[Any]]:
    generations = [v.generation for v in verdicts]
    return [
        [g.context.run_id for g in generations],
        [g.item.row_id for g in generations],
        [g.response for g in generations],
        [v.answer for v in verdicts],
        [v.extraction for v in verdicts],
        [v.rules_answer for v in verdicts],
        [_finish_reason(g) for g in generations],
    ]


RESULT_COLUMNS = (
    "run_id", "row_id", "setting", "method", "source", "category", "preference",
    "gold_option", "response", "answer", "extraction", "judge_rating", "judge_outcome",
    "judge_raw", "parse_fallback", "parse_failure", "finish_reason", "extractor",
    "rules_answer", "thinking", "rewrite_read", "tokens_in", "tokens_out", "latency_s",
    "retries", "model_calls",
)  # fmt: skip


def _result_columns(verdicts: Sequence[Verdict]) -> list[list[Any]]:
    generations = [v.generation for v in verdicts]
    items = [g.item for g in generations]
    return [
        [g.context.run_id for g in generations],
        [i.row_id for i in items],
        [g.setting for g in generations],
        [g.method for g in generations],
        [i.source for i in items],
        [i.category for i in items],
        [i.preference for i in items],
        [i.gold_option for i in items],
        [g.response for g in generations],
        [v.answer for v in verdicts],
        [v.extraction for v in verdicts],
        [v.judge_rating for v in verdicts],
        [v.judge_outcome for v in verdicts],
        [v.judge_raw for v in verdicts],
        [g.parse_fallback for g in generations],
        [g.parse_failure for g in generations],
        [_finish_reason(g) for g in generations],
        [v.extractor for v in verdicts],
        [v.rules_answer for v in verdicts],
        [g.thinking for g in generations],
        [g.rewrite_read for g in generations],
        *_usage_columns(verdicts),
    ]


_ARROW_TYPES: dict[object, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    datetime: pa.timestamp("us"),
}


def _schema(names: tuple[str, ...], row_type: type) -> pa.Schema:
    """The Arrow schema of columns ``names`` and ``stored_at``, typed as ``row_type`` says."""
    hints = get_type_hints(row_type)
    fields = []
    for name in (*names, "stored_at"):
        kinds = [k for k in get_args(hints[name]) or (hints[name],) if k is not type(None)]
        fields.append(pa.field(name, _ARROW_TYPES[kinds[0]]))
    return pa.schema(fields)


BASELINE_SCHEMA = _schema(BASELINE_COLUMNS, BaselineRow)
REPEAT_SCHEMA = _schema(REPEAT_COLUMNS, BaselineRepeatRow)
RESULT_SCHEMA = _schema(RESULT_COLUMNS, ResultRow)

# Records are converted this many at a time: converting a column holds the GIL, and a live
# query answered in the same process (the sink's API) waits for it at every step.
_CHUNK_ROWS = 2048


def _batch(schema: pa.Schema, columns: list[list[Any]], now: datetime) -> pa.Table:
    """The columns as an Arrow table of ``schema``, then ``stored_at`` = ``now``."""
    n_rows = len(columns[0])
    arrays = [
        pa.chunked_array(
            [pa.array(c[i : i + _CHUNK_ROWS], t) for i in range(0, n_rows, _CHUNK_ROWS)], t
        )
        for c, t in zip(columns, schema.types, strict=False)  # stored_at: not in ``columns``
    ]
    arrays.append(pa.chunked_array([pa.repeat(pa.scalar(now, pa.timestamp("us")), n_rows)]))
    return pa.Table.from_arrays(arrays, schema=schema)


def _stored(verdict: Verdict, stored_at: str) -> Result:
    g = verdict.generation
    item = g.item
    return Result(
        run_id=g.context.run_id,
        row_id=item.row_id,
        setting=g.setting,
        method=g.method,
        answer=verdict.answer,
        correct=verdict.answer == item.gold_option,
        judge_outcome=verdict.judge_outcome,
        stored_at=stored_at,
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
            with self._transaction() as con:
                con.execute(STORE_SQL)
                create_metric_views(con)
                _ensure_kept_tables(con)
                con.execute(LINEAGE_SQL)

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
            created_at=_utc(spec.created_at),
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
            lineage=spec.lineage,
            version=spec.version_label,
            shuffle_seed=spec.shuffle_seed,
        )
        with self._transaction() as con:
            _upsert(con, "runs", _row_table([row]))
            _recount_run(con, ctx.run_id)

    def save_verdicts(self, verdicts: Sequence[Verdict]) -> list[Result]:
        """Upsert baselines and results in one transaction, with the metric cells they
        change; return the stored rows (not the repeated baselines: no change-feed record)."""
        now = _now()
        baselines: list[Verdict] = []
        repeats: list[Verdict] = []
        results: list[Verdict] = []
        for v in verdicts:
            method = v.generation.method
            if method == BASELINE_METHOD:
                baselines.append(v)
            elif method == BASELINE_REPEAT_METHOD:
                repeats.append(v)
            else:
                results.append(v)
        batches = {
            "baselines": (BASELINE_SCHEMA, _baseline_columns, baselines),
            "results": (RESULT_SCHEMA, _result_columns, results),
            "baseline_repeats": (REPEAT_SCHEMA, _repeat_columns, repeats),
        }
        tables: dict[str, pa.Table] = {}
        touched: set[tuple[str, int]] = set()
        for table, (schema, columns_of, rows) in batches.items():
            if rows:
                columns = columns_of(rows)
                tables[table] = _batch(schema, columns, now)
                touched.update(zip(columns[0], columns[1], strict=True))
        with self._transaction() as con, _CellRecount(con, touched):
            for table, rows in tables.items():
                _upsert(con, table, rows)
        # made last: short-lived, they are not promoted by the collections of the work above
        stored_at = now.isoformat()
        return [
            _stored(v, stored_at) for v in verdicts if v.generation.method != BASELINE_REPEAT_METHOD
        ]

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
        if not rows:
            return
        with self._transaction() as con:
            _upsert(con, "progress", _row_table(rows))

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
        if not rows:
            return
        with self._transaction() as con:
            _upsert(con, "dead_letters", _row_table(rows))

    def save_cancels(self, cancels: Sequence[RunCancel]) -> None:
        """Upsert run cancellations (one per run: a later one replaces it)."""
        rows = [
            RunCancelRow(run_id=c.run_id, cancelled_at=_utc(c.cancelled_at), reason=c.reason)
            for c in cancels
        ]
        self._append("run_cancels", rows)

    def save_acceptances(self, acceptances: Sequence[Acceptance]) -> None:
        """Append acceptances (a redelivered one is stored once)."""
        rows = [
            AcceptanceRow(
                run_id=a.run_id, lineage=a.lineage, accepted_at=_utc(a.accepted_at), note=a.note
            )
            for a in acceptances
        ]
        self._append("acceptances", rows)

    def save_gate_decisions(self, decisions: Sequence[GateDecision]) -> None:
        """Append gate verdicts (a redelivered one is stored once)."""
        rows = [
            GateDecisionRow(
                candidate_run_id=d.candidate_run_id,
                reference_run_id=d.reference_run_id,
                lineage=d.lineage,
                passed=d.passed,
                decided_at=_utc(d.decided_at),
                summary=d.summary,
            )
            for d in decisions
        ]
        self._append("gate_decisions", rows)

    def _append(self, table: str, rows: Sequence[Any]) -> None:
        if rows:
            with self._transaction() as con:
                _upsert(con, table, _row_table(rows))

    def _transaction(self) -> _Transaction:
        return _Transaction(self.con)


# The primary key of every table of store.sql (tests/test_store.py checks them).
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "runs": ("run_id",),
    "baselines": ("run_id", "row_id"),
    "results": ("run_id", "row_id", "setting", "method"),
    "baseline_repeats": ("run_id", "row_id"),
    "progress": ("run_id", "row_id", "setting", "method", "stage"),
    "dead_letters": ("service", "topic", "partition", "offset"),
    "run_cancels": ("run_id",),
    "acceptances": ("run_id", "accepted_at"),
    "gate_decisions": ("candidate_run_id", "decided_at"),
}


# Batches this large check whether their keys are new (~1.5 ms per statement, measured).
_KEY_CHECK_ROWS = 2000


def _upsert(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    """Upsert many rows at once, by column name, through Arrow (executemany is ~100x slower).

    ``INSERT OR REPLACE`` costs DuckDB about twice a plain ``INSERT`` of new keys (measured
    on DuckDB 2.0.1, 1M results: 3.2 s against 1.6 s), and new keys are the sink's usual
    case, so a batch of at least ``_KEY_CHECK_ROWS`` rows whose keys are neither stored nor
    repeated in it is INSERTed; any other batch is upserted as a whole (a repeated key: the
    first of the batch is kept, as ``INSERT OR REPLACE`` keeps it). Smaller batches skip the
    check: it costs more than it saves there."""
    key = ", ".join(f'"{k}"' for k in PRIMARY_KEYS[table])
    con.register("incoming_rows", rows)
    try:
        found = None
        if rows.num_rows >= _KEY_CHECK_ROWS:
            found = con.execute(
                f"SELECT (SELECT count(*) FROM incoming_rows SEMI JOIN {table} USING ({key})) "
                f"+ (SELECT count(*) - count(DISTINCT ({key})) FROM incoming_rows)"
            ).fetchone()
        verb = "INSERT" if found == (0,) else "INSERT OR REPLACE"
        con.execute(f"{verb} INTO {table} BY NAME SELECT * FROM incoming_rows")
    finally:
        con.unregister("incoming_rows")


def _row_table(rows: Sequence[Any]) -> pa.Table:
    """Rows (TypedDicts of one table) as an Arrow table, built column by column:
    ``Table.from_pylist`` reads them row by row and is ~3x slower."""
    return pa.Table.from_pydict({name: [row[name] for row in rows] for name in rows[0]})


class _Transaction:
    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        self.con.execute("BEGIN TRANSACTION")
        return self.con

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")


# -- the kept tables: metric cells and values, up to date in every write transaction ----------
#
# TABLE perg_cells holds the counts of view perg_cell_counts (perg/metrics.sql): one row per
# finest cell (run, setting, method, source, preference, category) with at least one outcome.
# Every write that can change an outcome changes the cells in the same transaction, so they
# never diverge from the rows: for the (run, row) pairs a verdict batch touches, the cells of
# their outcomes are counted before the upserts and after them, and the difference is added
# (an outcome that moves, appears or is replaced is taken out of its old cell and counted in
# its new one; rows it does not touch count the same twice). A run's row changes every outcome
# of the run (its judge threshold): its cells are counted again from its outcomes. Then TABLE
# perg_metric_values gets the values of view perg_metric_values_of_cells again for the runs
# touched, and TABLE perg_outcome_flags the flags of the touched (run, row) pairs (a run's row:
# all its flags). Measured on this 2-core machine (benchmarks/pipeline.py --only P4): a live metric
# query at 1M results, while a writer ingests, p95 25-32 ms against 150-170 ms over the rows;
# the price is ~20 ms more per write transaction (two counts of the touched rows, one values
# refresh), which large batches amortize.

_CELL_KEY = ("run_id", "setting", "method", "source", "preference", "category")
_CELL_KEY_SQL = ", ".join(_CELL_KEY)

# The counts of the cells of the touched (run, row) pairs; the row_id range lets DuckDB skip
# the row groups (zone maps) of the rest of the results.
_TOUCHED_CELLS_SQL = f"""
SELECT {_CELL_KEY_SQL}, bool_and(afr_defined) AS afr_defined, sum(COLUMNS('^n_'))::BIGINT
FROM perg_cell_contributions
WHERE row_id BETWEEN $first AND $last
    AND (run_id, row_id) IN (SELECT run_id, row_id FROM perg_touched_rows)
GROUP BY {_CELL_KEY_SQL}
"""

# The cells of the touched runs with the difference added, the cells left empty dropped.
_MERGED_CELLS_SQL = f"""
SELECT {_CELL_KEY_SQL}, bool_and(afr_defined) AS afr_defined, sum(COLUMNS('^n_'))::BIGINT
FROM (
    SELECT * FROM perg_cells WHERE run_id IN (SELECT run_id FROM perg_touched_rows)
    UNION ALL BY NAME
    ({_TOUCHED_CELLS_SQL})
    UNION ALL BY NAME
    SELECT {_CELL_KEY_SQL}, afr_defined, -COLUMNS('^n_') FROM perg_cells_before
)
GROUP BY {_CELL_KEY_SQL}
HAVING sum(n_rows) > 0
"""


# The kept outcome flags of the touched (run, row) pairs, replaced by their flags now.
_TOUCHED_FLAGS_SQL = tuple(
    f"{verb} WHERE row_id BETWEEN $first AND $last "
    "AND (run_id, row_id) IN (SELECT run_id, row_id FROM perg_touched_rows)"
    for verb in (
        "DELETE FROM perg_outcome_flags",
        "INSERT INTO perg_outcome_flags BY NAME SELECT * FROM perg_outcome_flags_of_rows",
    )
)


class _CellRecount:
    """Inside a write transaction: brings perg_cells up to date with the upserts made within
    it for the ``touched`` (run_id, row_id) pairs. The counts in between live in temporary
    tables of the transaction (``execute`` plans a query once; an Arrow round trip through
    ``sql()`` plans it twice)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, touched: set[tuple[str, int]]) -> None:
        self.con = con
        self.touched = touched
        self.bounds: dict[str, int] = {}

    def __enter__(self) -> None:
        if not self.touched:
            return
        run_ids, row_ids = zip(*self.touched, strict=True)
        self.bounds = {"first": min(row_ids), "last": max(row_ids)}
        rows = pa.table({"run_id": pa.array(run_ids), "row_id": pa.array(row_ids, pa.int32())})
        self.con.register("perg_touched_rows", rows)
        self.con.execute(
            f"CREATE TEMP TABLE perg_cells_before AS {_TOUCHED_CELLS_SQL}", self.bounds
        )

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self.bounds:
            return
        con = self.con
        try:
            if exc_type is None:
                con.execute(
                    f"CREATE TEMP TABLE perg_cells_merged AS {_MERGED_CELLS_SQL}", self.bounds
                )
                con.execute(
                    "DELETE FROM perg_cells WHERE run_id IN (SELECT run_id FROM perg_touched_rows)"
                )
                con.execute("INSERT INTO perg_cells BY NAME SELECT * FROM perg_cells_merged")
                con.execute("DROP TABLE perg_cells_before; DROP TABLE perg_cells_merged")
                _refresh_values(con, {run_id for run_id, _ in self.touched})
                for statement in _TOUCHED_FLAGS_SQL:
                    con.execute(statement, self.bounds)
            # else: the transaction rolls back, and its temporary tables with it
        finally:
            con.unregister("perg_touched_rows")


def _recount_run(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Count the cells of one run again from all its outcomes, its metric values and its
    outcome flags."""
    for table, view in (
        ("perg_cells", "perg_cell_counts"),
        ("perg_outcome_flags", "perg_outcome_flags_of_rows"),
    ):
        con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {view} WHERE run_id = ?", [run_id])
    _refresh_values(con, [run_id])


def _refresh_values(con: duckdb.DuckDBPyConnection, run_ids: Iterable[str]) -> None:
    """Compute the kept metric values of these runs again from their kept cells."""
    for run_id in run_ids:
        con.execute("DELETE FROM perg_metric_values WHERE run_id = ?", [run_id])
        con.execute(
            "INSERT INTO perg_metric_values BY NAME "
            "SELECT * FROM perg_metric_values_of_cells WHERE run_id = ?",
            [run_id],
        )


# What the kept tables were computed with: the store's and the metrics' SQL. A store whose
# tables say otherwise (or has none: made before they existed) computes them again on open.
CELLS_VERSION = hashlib.sha256((STORE_SQL + metrics_sql()).encode()).hexdigest()

# The kept tables, each computed by a view of metrics.sql, in the order they depend on.
KEPT_TABLES = {
    "perg_cells": "perg_cell_counts",
    "perg_metric_values": "perg_metric_values_of_cells",
    "perg_outcome_flags": "perg_outcome_flags_of_rows",
}


def _ensure_kept_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create (or rebuild) the kept tables from every stored outcome, unless they hold what
    this version of the SQL computes; inside the caller's transaction."""
    found = dict(
        con.execute(
            "SELECT table_name, comment FROM duckdb_tables() WHERE database_name = "
            "current_database() AND schema_name = 'main' AND table_name IN ?",
            [list(KEPT_TABLES)],
        ).fetchall()
    )
    if all(found.get(table) == CELLS_VERSION for table in KEPT_TABLES):
        return
    for table, view in KEPT_TABLES.items():
        if table not in found:
            con.execute(f"DROP VIEW IF EXISTS {table}")  # metrics.sql's stand-in
        con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM {view}")
        con.execute(f"COMMENT ON TABLE {table} IS '{CELLS_VERSION}'")


# One aggregate per table over the picked runs' rows, joined to the runs: ~2x faster than a
# correlated subquery per count (DuckDB 2.0.1, 1M results: 9 ms against 22 ms), and a run's
# rows are found by its run_id's zone maps when the store holds many runs.
_STATUS_SQL = """
WITH picked AS (
    SELECT * FROM runs WHERE $run_id IS NULL OR run_id = $run_id
), generations AS (
    SELECT run_id,
        count(*) FILTER (stage <> 'aligned' AND method <> 'baseline_repeat') AS generated,
        count(*) FILTER (stage = 'aligned') AS aligned
    FROM progress WHERE run_id IN (SELECT run_id FROM picked) GROUP BY run_id
), stored_baselines AS (
    SELECT run_id, count(*) AS n, sum(retries) AS retries
    FROM baselines WHERE run_id IN (SELECT run_id FROM picked) GROUP BY run_id
), stored_results AS (
    SELECT run_id, count(*) AS n, sum(retries) AS retries
    FROM results WHERE run_id IN (SELECT run_id FROM picked) GROUP BY run_id
), letters AS (
    SELECT run_id, count(*) AS n
    FROM dead_letters WHERE run_id IN (SELECT run_id FROM picked) GROUP BY run_id
), repeats AS (
    SELECT run_id, count(*) AS n
    FROM baseline_repeats WHERE run_id IN (SELECT run_id FROM picked) GROUP BY run_id
)
SELECT
    r.run_id, r.model, r.protocol, strftime(r.created_at, '%Y-%m-%dT%H:%M:%SZ'),
    r.n_rows, r.expected_results,
    r.n_rows + r.n_rows * len(r.settings)
        * len(list_filter(r.methods, lambda m: m <> 'pref_aligner')) AS expected_generations,
    CASE WHEN list_contains(r.methods, 'pref_aligner') THEN r.n_rows * len(r.settings) ELSE 0 END,
    coalesce(g.generated, 0),
    coalesce(g.aligned, 0),
    coalesce(b.n, 0),
    coalesce(s.n, 0),
    coalesce(b.retries, 0) + coalesce(s.retries, 0),
    coalesce(d.n, 0),
    CASE WHEN coalesce(r.spec->>'$.context.repeat_baseline' = 'true', false)
        THEN r.n_rows ELSE 0 END,
    coalesce(x.n, 0),
    c.run_id IS NOT NULL,
    r.lineage,
    r.version
FROM picked AS r
LEFT JOIN generations AS g USING (run_id)
LEFT JOIN stored_baselines AS b USING (run_id)
LEFT JOIN stored_results AS s USING (run_id)
LEFT JOIN letters AS d USING (run_id)
LEFT JOIN repeats AS x USING (run_id)
LEFT JOIN run_cancels AS c USING (run_id)
ORDER BY r.created_at
"""


def run_statuses(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> list[RunStatus]:
    """The status of one run (``run_id``), or of every stored run oldest first; ``con`` is a
    connection to the store, e.g. ``ResultStore(path, read_only=True).cursor()``."""
    rows = con.execute(_STATUS_SQL, {"run_id": run_id}).fetchall()
    return [RunStatus(*row) for row in rows]
