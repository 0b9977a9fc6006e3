"""The results store writes rows by column name: one row type per table of store.sql."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_type_hints

import duckdb
from fixtures.live.runs import fails, make_spec, verdicts

from services.sink.store import (
    BASELINE_COLUMNS,
    PRIMARY_KEYS,
    REPEAT_COLUMNS,
    RESULT_COLUMNS,
    ROW_TYPES,
    STORE_SQL,
    ResultStore,
    run_statuses,
)

COMPARED = {
    "baselines": "run_id, row_id, source, category, gold_option, answer, extraction, tokens_in, "
    "tokens_out, retries, finish_reason",
    "results": "run_id, row_id, setting, method, source, preference, gold_option, answer, "
    "judge_rating, judge_outcome, parse_fallback, tokens_in, model_calls, retries",
}


def table_columns(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    rows = con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() "
        "WHERE table_name IN (SELECT table_name FROM duckdb_tables()) "
        "ORDER BY table_name, column_index"
    ).fetchall()
    columns: dict[str, list[str]] = {}
    for table, column in rows:
        columns.setdefault(table, []).append(column)
    return columns


def test_row_types_name_every_column_of_store_sql() -> None:
    con = duckdb.connect()
    con.execute(STORE_SQL)
    tables = table_columns(con)
    assert set(ROW_TYPES) == set(tables)
    for table, row_type in ROW_TYPES.items():
        assert sorted(get_type_hints(row_type)) == sorted(tables[table]), table


def test_verdict_records_fill_every_column_of_their_table() -> None:
    built = {"baselines": BASELINE_COLUMNS, "results": RESULT_COLUMNS,
             "baseline_repeats": REPEAT_COLUMNS}  # fmt: skip
    for table, names in built.items():
        assert len(set(names)) == len(names), table
        assert sorted([*names, "stored_at"]) == sorted(get_type_hints(ROW_TYPES[table])), table


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
