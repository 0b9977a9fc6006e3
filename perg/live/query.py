"""Running one guarded user query: a time limit, a row cap, and JSON / CSV / Arrow output.

Each query runs on its own cursor; DuckDB's MVCC gives it one consistent snapshot, and the sink
writes every batch in one transaction, so a query never sees half a batch.
"""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Literal

import duckdb
import orjson
import pyarrow as pa

from perg.config import setting
from perg.live.sqlguard import catalog_names, check_query
from perg.metrics import Grouping, compute_metrics
from perg.store import ResultStore, run_statuses

Format = Literal["json", "csv", "arrow"]
FORMATS: tuple[Format, ...] = ("json", "csv", "arrow")
_BATCH_ROWS = 2048


class QueryTimeout(RuntimeError):
    """The query ran past its time limit and was interrupted."""


class RowCapExceeded(RuntimeError):
    """The query returned more rows than the cap allows."""


@dataclass(frozen=True, slots=True)
class QueryLimits:
    timeout_s: float = 10.0
    row_cap: int = 10_000

    @classmethod
    def from_settings(cls) -> QueryLimits:
        """``PERG_SQL_TIMEOUT_S`` and ``PERG_SQL_ROW_CAP`` (env or perg.toml)."""
        return cls(float(setting("sql_timeout_s", "10")), int(setting("sql_row_cap", "10000")))


@dataclass(frozen=True, slots=True)
class QueryResult:
    table: pa.Table

    @property
    def columns(self) -> list[str]:
        return list(self.table.column_names)

    def rows(self) -> list[list[Any]]:
        return [list(row) for row in zip(*(c.to_pylist() for c in self.table.columns), strict=True)]

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


def run_query(
    con: duckdb.DuckDBPyConnection, sql: str, allowed: Iterable[str], limits: QueryLimits
) -> QueryResult:
    """Check ``sql`` (see :mod:`perg.live.sqlguard`) and run it on ``con`` within ``limits``."""
    check_query(con, sql, allowed)
    timer = threading.Timer(limits.timeout_s, con.interrupt)
    timer.start()
    try:
        reader = con.sql(sql).to_arrow_reader(_BATCH_ROWS)
        batches: list[pa.RecordBatch] = []
        n_rows = 0
        for batch in reader:
            n_rows += batch.num_rows
            if n_rows > limits.row_cap:
                raise RowCapExceeded(
                    f"the query returns more than {limits.row_cap} rows (the row cap, "
                    "PERG_SQL_ROW_CAP); add a LIMIT or aggregate"
                )
            batches.append(batch)
        return QueryResult(pa.Table.from_batches(batches, schema=reader.schema))
    except duckdb.InterruptException as exc:
        raise QueryTimeout(
            f"the query ran longer than {limits.timeout_s:g} s (the time limit, "
            "PERG_SQL_TIMEOUT_S) and was interrupted"
        ) from exc
    finally:
        timer.cancel()


class StoreReader:
    """Reads of a :class:`ResultStore`, each on a cursor of its own (one per call)."""

    def __init__(self, store: ResultStore, limits: QueryLimits) -> None:
        self.store = store
        self.limits = limits

    def statuses(self, run_id: str | None = None) -> list[dict[str, Any]]:
        with closing(self.store.cursor()) as con:
            return [s.as_dict() for s in run_statuses(con, run_id)]

    def metrics(self, run_id: str | None, by: Grouping = "source") -> list[dict[str, Any]]:
        with closing(self.store.cursor()) as con:
            return compute_metrics(con, run_id, by=by)

    def query(self, sql: str) -> QueryResult:
        with closing(self.store.cursor()) as con:
            return run_query(con, sql, catalog_names(con), self.limits)

    def sql(self, sql: str) -> dict[str, Any]:
        return self.query(sql).as_dict()
