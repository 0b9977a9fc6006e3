"""The kept tables of metrics.sql, up to date in every write transaction of the store.

TABLE ``perg_cells`` holds the counts of every finest metric cell, TABLE ``perg_metric_values``
the metric values of those cells and TABLE ``perg_outcome_flags`` every outcome's keys and
verdicts without its texts, so the metric views read a few hundred rows however many results
are stored and the explorer pages over narrow columns, and both always agree with the rows
(the comment below says how).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import duckdb
import pyarrow as pa

from perg.metrics import metrics_sql
from services.sink.store.tables import STORE_SQL

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


class CellRecount:
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


def recount_run(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
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


def ensure_kept_tables(con: duckdb.DuckDBPyConnection) -> None:
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
