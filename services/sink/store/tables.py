"""The tables of store.sql as Python declares them: one row type per table the sink writes
record by record, and one column list per verdict table (``baselines``, ``results``,
``baseline_repeats``) that names each column, its Arrow type and what it reads from a verdict.

store.sql is the DDL; every column is declared once here, and tests/test_store.py checks that
the two agree (names and primary keys). The column list drives both the Arrow table a batch is
inserted from and the columns it names: rows are inserted ``BY NAME``, so the order of the
columns in store.sql does not matter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from importlib import resources
from operator import attrgetter
from typing import Any, TypedDict, get_type_hints

import pyarrow as pa

from schemas import Generation, Verdict

STORE_SQL = resources.files(__package__).joinpath("store.sql").read_text(encoding="utf-8")

# -- the tables written record by record: one row type each -------------------------------


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
    "progress": ProgressRow,
    "dead_letters": DeadLetterRow,
    "run_cancels": RunCancelRow,
    "acceptances": AcceptanceRow,
    "gate_decisions": GateDecisionRow,
}


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


def utc(timestamp: str) -> datetime:
    """An ISO 8601 time stamp as a naive UTC datetime (the store's TIMESTAMP columns)."""
    return datetime.fromisoformat(timestamp).astimezone(UTC).replace(tzinfo=None)


# -- the verdict tables: built column by column -------------------------------------------
#
# The rows of the verdict tables are built column by column straight from the verdicts and
# turned into Arrow columns (the sink's hot path: a dict or a tuple per row costs time and
# garbage-collector passes). A column reads an attribute path of each verdict (``attrgetter``
# over the batch, in C) or is computed from the batch; ``stored_at`` is the batch's time.

Read = Callable[[Sequence[Verdict]], list[Any]]

STRING, INT, FLOAT, BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()
TIMESTAMP = pa.timestamp("us")


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a verdict table: its name, its Arrow type, how it is read from verdicts."""

    name: str
    type: pa.DataType
    read: Read


def attribute(name: str, type: pa.DataType, path: str) -> Column:
    """The column ``name`` holding attribute ``path`` (dotted) of each verdict."""
    get = attrgetter(path)
    return Column(name, type, lambda verdicts: list(map(get, verdicts)))


def _finish_reason(generation: Generation) -> str | None:
    """The finish reason of the last call of the generation's own stage."""
    stage = generation.stage
    for c in reversed(generation.calls):
        if c.stage == stage:
            return c.finish_reason
    return None


def _finish_reasons(verdicts: Sequence[Verdict]) -> list[str | None]:
    return [_finish_reason(v.generation) for v in verdicts]


# Model usage of each stored answer, summed over every call behind it (the generation's and
# the verdict's): computed in one pass for all five, read here by name.
USAGE = ("tokens_in", "tokens_out", "latency_s", "retries", "model_calls")


def usage_columns(verdicts: Sequence[Verdict]) -> dict[str, list[Any]]:
    """tokens_in, tokens_out, latency_s, retries and model_calls of each verdict, one pass."""
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
    return dict(zip(USAGE, [tokens_in, tokens_out, latencies, retries, n_calls], strict=True))


USAGE_TYPES = {
    "tokens_in": INT,
    "tokens_out": INT,
    "latency_s": FLOAT,
    "retries": INT,
    "model_calls": INT,
}

# Records are converted this many at a time: converting a column holds the GIL, and a live
# query answered in the same process (the sink's API) waits for it at every step.
_CHUNK_ROWS = 2048


@dataclass(frozen=True, eq=False)
class VerdictTable:
    """A table of verdicts: its columns read from each verdict, its usage columns (a subset
    of :data:`USAGE`), and ``stored_at``."""

    name: str
    columns: tuple[Column, ...]
    usage: tuple[str, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        """Every column of the table, ``stored_at`` last."""
        return (*(c.name for c in self.columns), *self.usage, "stored_at")

    @cached_property
    def schema(self) -> pa.Schema:
        """The Arrow schema of the table's rows (every column, ``stored_at`` last)."""
        fields = [pa.field(c.name, c.type) for c in self.columns]
        fields += [pa.field(name, USAGE_TYPES[name]) for name in self.usage]
        return pa.schema([*fields, pa.field("stored_at", TIMESTAMP)])

    def rows(self, verdicts: Sequence[Verdict], now: datetime) -> pa.Table:
        """The verdicts as an Arrow table of this table's columns, ``stored_at`` = ``now``."""
        columns = [c.read(verdicts) for c in self.columns]
        if self.usage:
            usage = usage_columns(verdicts)
            columns += [usage[name] for name in self.usage]
        n_rows = len(verdicts)
        schema = self.schema
        arrays = [
            pa.chunked_array(
                [pa.array(c[i : i + _CHUNK_ROWS], t) for i in range(0, n_rows, _CHUNK_ROWS)], t
            )
            for c, t in zip(columns, schema.types, strict=False)  # stored_at: not in ``columns``
        ]
        arrays.append(pa.chunked_array([pa.repeat(pa.scalar(now, TIMESTAMP), n_rows)]))
        return pa.Table.from_arrays(arrays, schema=schema)


RUN_ID = attribute("run_id", STRING, "generation.context.run_id")
ROW_ID = attribute("row_id", INT, "generation.item.row_id")
RESPONSE = attribute("response", STRING, "generation.response")
ANSWER = attribute("answer", STRING, "answer")
EXTRACTION = attribute("extraction", STRING, "extraction")
FINISH_REASON = Column("finish_reason", STRING, _finish_reasons)
EXTRACTOR = attribute("extractor", STRING, "extractor")
RULES_ANSWER = attribute("rules_answer", STRING, "rules_answer")
THINKING = attribute("thinking", STRING, "generation.thinking")
SOURCE = attribute("source", STRING, "generation.item.source")
CATEGORY = attribute("category", STRING, "generation.item.category")
GOLD_OPTION = attribute("gold_option", STRING, "generation.item.gold_option")

BASELINES = VerdictTable(
    "baselines",
    (
        RUN_ID,
        ROW_ID,
        SOURCE,
        CATEGORY,
        GOLD_OPTION,
        RESPONSE,
        ANSWER,
        EXTRACTION,
        FINISH_REASON,
        EXTRACTOR,
        RULES_ANSWER,
        THINKING,
    ),
    usage=("tokens_in", "tokens_out", "latency_s", "retries"),
)

RESULTS = VerdictTable(
    "results",
    (
        RUN_ID,
        ROW_ID,
        attribute("setting", STRING, "generation.setting"),
        attribute("method", STRING, "generation.method"),
        SOURCE,
        CATEGORY,
        attribute("preference", STRING, "generation.item.preference"),
        GOLD_OPTION,
        RESPONSE,
        ANSWER,
        EXTRACTION,
        attribute("judge_rating", INT, "judge_rating"),
        attribute("judge_outcome", STRING, "judge_outcome"),
        attribute("judge_raw", STRING, "judge_raw"),
        attribute("parse_fallback", BOOL, "generation.parse_fallback"),
        attribute("parse_failure", BOOL, "generation.parse_failure"),
        FINISH_REASON,
        EXTRACTOR,
        RULES_ANSWER,
        THINKING,
        attribute("rewrite_read", STRING, "generation.rewrite_read"),
    ),
    usage=USAGE,
)

# The second no-preference answer of a run with a noise floor (--repeat-baseline).
BASELINE_REPEATS = VerdictTable(
    "baseline_repeats",
    (RUN_ID, ROW_ID, RESPONSE, ANSWER, EXTRACTION, RULES_ANSWER, FINISH_REASON),
)

VERDICT_TABLES = {t.name: t for t in (BASELINES, RESULTS, BASELINE_REPEATS)}


def table_columns() -> dict[str, tuple[str, ...]]:
    """The columns of every table of store.sql, as declared here."""
    declared = {table: tuple(get_type_hints(row)) for table, row in ROW_TYPES.items()}
    return declared | {name: table.column_names for name, table in VERDICT_TABLES.items()}


def row_table(rows: Sequence[Any]) -> pa.Table:
    """Rows (TypedDicts of one table) as an Arrow table, built column by column:
    ``Table.from_pylist`` reads them row by row and is ~3x slower."""
    return pa.Table.from_pydict({name: [row[name] for row in rows] for name in rows[0]})
