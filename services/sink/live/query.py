"""Running one user query: the guard, the hardened engine, a time limit, a row cap and a byte cap.

The query is checked by :mod:`services.sink.live.sqlguard`, then runs on a fresh cursor inside
a read-only transaction that is always rolled back (:mod:`services.sink.live.engine`). DuckDB's
MVCC gives it one consistent snapshot, and the sink writes every batch in one transaction, so a
query never sees half a batch. Results stream in Arrow batches and stop at the row cap or the
byte cap.
"""

from __future__ import annotations

import csv
import io
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from perg.config import Settings
from perg.errors import InputError
from perg.metrics import Grouping, compute_agreement, compute_metrics
from services.sink.live.engine import Database, read_only_cursor, single_select
from services.sink.live.lineages import lineage_versions, lineages
from services.sink.live.rows import (
    ChangedFilter,
    QuestionBook,
    RowFilter,
    changed_rows,
    explore_rows,
    facets,
)
from services.sink.live.sqlguard import check_query
from services.sink.store import run_statuses

Format = Literal["json", "csv", "arrow"]
FORMATS: tuple[Format, ...] = ("json", "csv", "arrow")
_BATCH_ROWS = 2048

# DuckDB's Python client takes the GIL back after every execution task of a query (to check
# for Ctrl-C). In a process whose other threads run Python (the sink's writer), each of those
# waits up to the interpreter's switch interval, 5 ms by default: a live metric query over 300k
# results took ~4x longer than alone. 0.5 ms brings it back near its own time.
LIVE_QUERY_SWITCH_INTERVAL_S = 0.0005


def favour_live_queries() -> None:
    """Shorten the interpreter's thread switch interval to
    :data:`LIVE_QUERY_SWITCH_INTERVAL_S` (never lengthen it), for a process that answers live
    queries while it writes: the sink's live API calls this when it is created."""
    sys.setswitchinterval(min(sys.getswitchinterval(), LIVE_QUERY_SWITCH_INTERVAL_S))


class QueryTimeout(InputError):
    """The query ran past its time limit and was interrupted."""


class RowCapExceeded(InputError):
    """The query returned more rows than the cap allows."""


class ResultTooLarge(InputError):
    """The query's answer is larger than the byte cap allows."""


@dataclass(frozen=True, slots=True)
class QueryLimits:
    timeout_s: float = 10.0
    row_cap: int = 10_000
    max_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryLimits:
        """``PERG_SQL_TIMEOUT_S``, ``PERG_SQL_ROW_CAP``, ``PERG_SQL_MAX_BYTES``."""
        return cls(settings.sql_timeout_s, settings.sql_row_cap, settings.sql_max_bytes)

    def too_large(self, size: int) -> ResultTooLarge:
        return ResultTooLarge(
            f"the answer is larger than {self.max_bytes} bytes (the byte cap, "
            f"PERG_SQL_MAX_BYTES; it was at least {size}); select fewer or shorter columns"
        )


@dataclass(frozen=True, slots=True)
class QueryResult:
    table: pa.Table

    @property
    def columns(self) -> list[str]:
        return list(self.table.column_names)

    def rows(self) -> list[list[Any]]:
        columns = (_python_values(c) for c in self.table.columns)
        return [list(row) for row in zip(*columns, strict=True)]

    def as_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows(), "truncated": False}

    def to_json(self) -> bytes:
        return orjson.dumps(self.as_dict(), default=str)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.rows())
        return out.getvalue()

    def to_arrow_ipc(self) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.table.schema) as writer:
            writer.write_table(self.table)
        return bytes(sink.getvalue().to_pybytes())


def _python_values(column: pa.ChunkedArray) -> list[Any]:
    """The column as Python values; as text when Python cannot hold them (a date in year
    -290000 has no ``datetime.date``)."""
    try:
        values: list[Any] = column.to_pylist()
        return values
    except (OverflowError, ValueError, pa.ArrowException):
        try:
            values = pc.cast(column, pa.string()).to_pylist()
            return values
        except pa.ArrowException:
            return [_python_value(value) for value in column]


def _python_value(value: pa.Scalar) -> Any:
    try:
        return value.as_py()
    except (OverflowError, ValueError):
        return f"<{value.type} value out of Python's range>"


def run_query(db: Database, sql: str, limits: QueryLimits) -> QueryResult:
    """Check ``sql`` with the guard, then run it read-only on ``db`` within ``limits``."""
    check_query(sql)
    return run_unguarded(db, sql, limits)


def run_unguarded(db: Database, sql: str, limits: QueryLimits) -> QueryResult:
    """Run ``sql`` on the engine alone: one SELECT, read-only, rolled back, within ``limits``.
    Only the tests of the engine layer call this without :func:`run_query`'s guard."""
    single_select(sql)
    with read_only_cursor(db) as con, _time_limit(con, limits.timeout_s):
        try:
            reader = con.sql(sql).to_arrow_reader(_BATCH_ROWS)
            batches: list[pa.RecordBatch] = []
            n_rows = n_bytes = 0
            for batch in reader:
                n_rows += batch.num_rows
                n_bytes += batch.nbytes
                if n_rows > limits.row_cap:
                    raise RowCapExceeded(
                        f"the query returns more than {limits.row_cap} rows (the row cap, "
                        "PERG_SQL_ROW_CAP); add a LIMIT or aggregate"
                    )
                if n_bytes > limits.max_bytes:
                    raise limits.too_large(n_bytes)
                batches.append(batch)
            return QueryResult(pa.Table.from_batches(batches, schema=reader.schema))
        except duckdb.InterruptException as exc:
            raise QueryTimeout(
                f"the query ran longer than {limits.timeout_s:g} s (the time limit, "
                "PERG_SQL_TIMEOUT_S) and was interrupted"
            ) from exc


INTERRUPT_AGAIN_S = 0.1


@contextmanager
def _time_limit(con: duckdb.DuckDBPyConnection, timeout_s: float) -> Iterator[None]:
    """Interrupt ``con`` once ``timeout_s`` have passed, then again every
    ``INTERRUPT_AGAIN_S`` until the block ends: a single interrupt that lands before DuckDB
    starts executing (while it binds the query) can be lost, and the query would then run
    unbounded."""
    done = threading.Event()

    def interrupt() -> None:
        if done.wait(timeout_s):
            return
        con.interrupt()
        while not done.wait(INTERRUPT_AGAIN_S):
            con.interrupt()

    watchdog = threading.Thread(target=interrupt, name="sql-time-limit", daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        done.set()
        watchdog.join()


class StoreReader:
    """Reads of the results store, each on a fresh cursor in a read-only transaction."""

    def __init__(
        self, db: Database, limits: QueryLimits, questions: QuestionBook | None = None
    ) -> None:
        self.db = db
        self.limits = limits
        self.questions = questions or QuestionBook()

    def statuses(self, run_id: str | None = None) -> list[dict[str, Any]]:
        with read_only_cursor(self.db) as con:
            return [s.as_dict() for s in run_statuses(con, run_id)]

    def metrics(self, run_id: str | None, by: Grouping = "source") -> list[dict[str, Any]]:
        with read_only_cursor(self.db) as con:
            return compute_metrics(con, run_id, by=by)

    def agreement(self, run_id: str | None) -> list[dict[str, Any]]:
        """How often the rules parser and the run's model extractor disagree, pooled per run."""
        with read_only_cursor(self.db) as con:
            return compute_agreement(con, run_id)

    def query(self, sql: str) -> QueryResult:
        return run_query(self.db, sql, self.limits)

    def sql(self, sql: str) -> dict[str, Any]:
        return self.query(sql).as_dict()

    @contextmanager
    def _bounded(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only cursor whose queries stop at the time limit (:class:`QueryTimeout`)."""
        with read_only_cursor(self.db) as con, _time_limit(con, self.limits.timeout_s):
            try:
                yield con
            except duckdb.InterruptException as exc:
                raise QueryTimeout(
                    f"the page took longer than {self.limits.timeout_s:g} s (PERG_SQL_TIMEOUT_S)"
                ) from exc

    def rows(self, run_id: str, row_filter: RowFilter) -> dict[str, Any]:
        """One page of the explorer (services.sink.live.rows.explore_rows)."""
        with self._bounded() as con:
            return explore_rows(con, run_id, row_filter, self.questions)

    def changed(self, reference: str, candidate: str, f: ChangedFilter) -> dict[str, Any]:
        """One page of the discordant rows of two runs (services.sink.live.rows.changed_rows)."""
        with self._bounded() as con:
            return changed_rows(con, reference, candidate, f)

    def facets(self, run_id: str) -> dict[str, Any]:
        with self._bounded() as con:
            return facets(con, run_id)

    def lineages(self) -> list[dict[str, Any]]:
        with self._bounded() as con:
            return lineages(con)

    def lineage(self, name: str) -> dict[str, Any]:
        """One lineage's versions (services.sink.live.lineages.lineage_versions)."""
        with self._bounded() as con:
            return lineage_versions(con, name)
