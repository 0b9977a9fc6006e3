"""Read-only checking of user SQL, by construction rather than keyword filtering.

DuckDB parses the text itself: it must be exactly one ``SELECT`` statement (which excludes
INSERT, COPY, ATTACH, INSTALL/LOAD, SET, PRAGMA, CALL, EXPORT, ...), and its serialized syntax
tree is walked so that

* every table it names is a table or view of the results store (or a CTE in scope), which also
  blocks replacement scans such as ``FROM '/etc/passwd'`` or ``FROM 'x.parquet'``;
* table functions come from a small allow-list (no ``read_csv``, ``read_text``, ``glob``, ...);
* no scalar function on the deny-list is called (``getenv``, ``current_setting``, ``nextval``...);
* only known kinds of table reference occur.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import duckdb
import orjson

ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
DENIED_FUNCTIONS = frozenset({
    "getenv", "current_setting", "getvariable", "nextval", "currval", "setseed",
    "read_text", "read_blob", "read_csv", "read_csv_auto", "read_json", "read_json_auto",
    "read_json_objects", "read_ndjson", "read_parquet", "parquet_scan", "glob", "query",
    "query_table", "json_execute_serialized_sql", "sql_auto_complete", "which_secret",
    "checkpoint", "force_checkpoint",
})  # fmt: skip
# Table references a user query has no business producing.
_OTHER_REFS = frozenset({"CTE", "COLUMN_DATA", "DELIM_GET", "BOUND_TABLE_REF", "INVALID"})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_CATALOG_SQL = """
SELECT lower(table_name) FROM duckdb_tables()
WHERE database_name = current_database() AND schema_name = 'main'
UNION
SELECT lower(view_name) FROM duckdb_views()
WHERE database_name = current_database() AND schema_name = 'main' AND NOT internal
"""


class QueryRefused(ValueError):
    """The query is not a single read-only SELECT over the results store."""


def catalog_names(con: duckdb.DuckDBPyConnection) -> frozenset[str]:
    """Lower-cased names of the store's own tables and views."""
    return frozenset(row[0] for row in con.execute(_CATALOG_SQL).fetchall())


def check_query(con: duckdb.DuckDBPyConnection, sql: str, allowed: Iterable[str]) -> None:
    """Raise :class:`QueryRefused` unless ``sql`` is one SELECT reading only ``allowed`` names."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"the query does not parse: {exc}") from exc
    if len(statements) != 1:
        raise QueryRefused(f"exactly one statement is allowed, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryRefused(f"only SELECT queries are allowed, not {kind.name}")
    ((serialized,),) = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()
    tree = orjson.loads(serialized)
    if tree.get("error"):
        raise QueryRefused(f"the query does not parse: {tree.get('error_message')}")
    _walk(tree["statements"], frozenset(n.lower() for n in allowed))


def _walk(node: Any, names: frozenset[str]) -> None:
    if isinstance(node, list):
        for child in node:
            _walk(child, names)
        return
    if not isinstance(node, dict):
        return
    ctes = [entry["key"] for entry in (node.get("cte_map") or {}).get("map", [])]
    for cte in ctes:
        if not _IDENTIFIER.match(cte):
            raise QueryRefused(f"CTE names must be plain identifiers, not {cte!r}")
    names = names | {c.lower() for c in ctes}
    _check_node(node, names)
    for value in node.values():
        _walk(value, names)


def _check_node(node: dict[str, Any], names: frozenset[str]) -> None:
    kind = node.get("type")
    if node.get("class") == "FUNCTION":
        name = str(node["function_name"]).lower()
        if name in DENIED_FUNCTIONS:
            raise QueryRefused(f"function {name}() is not allowed in live queries")
    elif kind == "BASE_TABLE":
        _check_table(node, names)
    elif kind == "TABLE_FUNCTION":
        name = str(node["function"]["function_name"]).lower()
        if name not in ALLOWED_TABLE_FUNCTIONS:
            allowed = ", ".join(sorted(ALLOWED_TABLE_FUNCTIONS))
            raise QueryRefused(f"table function {name}() is not allowed (allowed: {allowed})")
    elif kind == "SHOW_REF" and node.get("query") is None:
        raise QueryRefused("SHOW is not allowed; DESCRIBE or SUMMARIZE a table or a query")
    elif kind in _OTHER_REFS:
        raise QueryRefused(f"table reference of kind {kind} is not allowed")


def _check_table(node: dict[str, Any], names: frozenset[str]) -> None:
    table = str(node["table_name"])
    if node.get("schema_name", "") not in ("", "main") or node.get("catalog_name", ""):
        raise QueryRefused(f"only the results store's own tables can be read, not {table!r}")
    if table.lower() not in names:
        known = ", ".join(sorted(names))
        raise QueryRefused(f"unknown table {table!r}: queries may read only {known}")
