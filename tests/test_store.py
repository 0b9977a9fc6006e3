"""The results store writes rows by column name: one row type per table of store.sql."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from fixtures.live.runs import fails, make_spec, verdicts

from services.sink.store import ResultStore, run_statuses
from services.sink.store.tables import PRIMARY_KEYS, STORE_SQL, VERDICT_TABLES
from services.sink.store.tables import table_columns as table_columns_declared

COMPARED = {
    "baselines": "run_id, row_id, source, category, gold_option, answer, extraction, tokens_in, "
    "tokens_out, retries, finish_reason",
    "results": "run_id, row_id, setting, method, source, preference, gold_option, answer, "
    "judge_rating, judge_outcome, parse_fallback, tokens_in, model_calls, retries",
}


def table_columns(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """The columns of every table of the database, in their order."""
    rows = con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() "
        "WHERE table_name IN (SELECT table_name FROM duckdb_tables()) "
        "ORDER BY table_name, column_index"
    ).fetchall()
    columns: dict[str, list[str]] = {}
    for table, column in rows:
        columns.setdefault(table, []).append(column)
    return columns


def test_the_declared_columns_are_those_of_store_sql() -> None:
    con = duckdb.connect()
    con.execute(STORE_SQL)
    tables = table_columns(con)
    declared = table_columns_declared()
    assert set(declared) == set(tables)
    for table, columns in declared.items():
        assert len(set(columns)) == len(columns), table
        assert sorted(columns) == sorted(tables[table]), table


# The Arrow type each DuckDB column type of the verdict tables is built as.
ARROW_OF = {
    "VARCHAR": pa.string(),
    "INTEGER": pa.int64(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us"),
}


def test_the_verdict_tables_are_built_with_the_types_of_store_sql() -> None:
    con = duckdb.connect()
    con.execute(STORE_SQL)
    for name, table in VERDICT_TABLES.items():
        ddl = dict(
            con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ?", [name]
            ).fetchall()
        )
        built = {field.name: field.type for field in table.schema}
        assert built == {column: ARROW_OF[kind] for column, kind in ddl.items()}, name


def test_primary_keys_are_those_of_store_sql() -> None:
    con = duckdb.connect()
    con.execute(STORE_SQL)
    found = con.execute(
        "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
        "WHERE constraint_type = 'PRIMARY KEY'"
    ).fetchall()
    assert {table: tuple(columns) for table, columns in found} == PRIMARY_KEYS


def write(store: ResultStore) -> dict[str, list[tuple[Any, ...]]]:
    spec = make_spec("run-a", 6)
    store.save_run(spec)
    store.save_verdicts(
        verdicts(spec, range(6), pref_wrong=fails("p", 40), unfollowed=fails("f", 30))
    )
    return {
        table: store.con.execute(f"SELECT {columns} FROM {table} ORDER BY ALL").fetchall()
        for table, columns in COMPARED.items()
    }


def test_column_order_in_store_sql_does_not_matter(tmp_path: Path) -> None:
    """The same rows land in the same columns when a table's columns are declared reversed."""
    expected = write(ResultStore(tmp_path / "plain.duckdb"))
    reversed_path = tmp_path / "reversed.duckdb"
    with duckdb.connect(str(reversed_path)) as con:
        for table in COMPARED:
            create = re.search(rf"CREATE TABLE IF NOT EXISTS {table} \((.*?)\n\);", STORE_SQL, re.S)
            assert create is not None
            lines = [line.strip().rstrip(",") for line in create.group(1).strip().splitlines()]
            key = next(line for line in lines if line.startswith("PRIMARY KEY"))
            columns = [line for line in lines if line and not line.startswith(("PRIMARY", "--"))]
            con.execute(f"CREATE TABLE {table} ({', '.join([*reversed(columns), key])})")
    store = ResultStore(reversed_path)
    order = table_columns(store.con)["results"]
    assert order[0] == "stored_at" and order[-1] == "run_id"
    assert write(store) == expected
    assert expected["results"] and expected["baselines"]


def test_redelivery_replaces_and_statuses_read_back(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "perg.duckdb")
    first = write(store)
    assert write(store) == first  # the same keys again: replaced, none added
    (status,) = run_statuses(store.cursor(), "run-a")
    assert (status.n_rows, status.baselines_stored, status.results_stored) == (6, 6, 24)
    assert status.done and status.as_dict()["done"] is True
    assert run_statuses(store.cursor(), "absent") == []
