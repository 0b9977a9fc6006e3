"""The statement guard of live SQL: an allow-list check of the whole parsed query.

DuckDB parses the text (``json_serialize_sql``, on a private in-memory connection) and the guard
walks every node of the tree: every CTE, subquery, set operation, table reference, table
function and function call. A query passes only if

* it is exactly one SELECT (also ``FROM ...``, ``WITH ...``, DESCRIBE/SUMMARIZE of a query);
* every node is of a kind the guard knows (SELECT, set operation and recursive-CTE query nodes;
  base tables, joins, subqueries, VALUES, the allowed table functions; plain expressions):
  anything else (DELETE/INSERT/UPDATE/COPY hidden in a CTE, PIVOT, SHOW, parameters, a node
  kind a newer DuckDB adds) is refused;
* every table it reads is one of :data:`DOCUMENTED_TABLES`, unqualified, or a CTE in scope:
  a CTE is visible in the CTEs after it and in the query below it (in its own recursive part
  only when DuckDB made it a recursive CTE), never before, so a CTE named like a system table
  never hides the real one from the guard;
* every function it calls is on the allow-list (:mod:`services.sink.live.sqlfunctions`),
  unqualified;
  table functions only ``range``, ``generate_series``, ``unnest``, ``json_each``, ``json_tree``.

Anything it does not understand is refused with :class:`QueryRefused` (HTTP 400), never an
internal error: parser errors, deep nesting and malformed trees included. The guard is one of
two layers: :mod:`services.sink.live.engine` holds even if the guard had a hole.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

import duckdb
import orjson

from perg._text import bracket_depth
from perg.errors import InputError, first_line
from services.sink.live.engine import EngineRefused, harden, single_select
from services.sink.live.sqlfunctions import ALLOWED_FUNCTIONS

DOCUMENTED_TABLES = frozenset(
    {
        "runs",
        "baselines",
        "baseline_repeats",
        "results",
        "progress",
        "dead_letters",
        "outcomes",
        "run_cancels",
        "acceptances",
        "gate_decisions",
        "run_states",
        "lineage_history",
        "metrics_by_source",
        "metrics_by_preference",
        "metrics_by_subject",
        "extraction_agreement",
        # the intermediate views of perg/metrics.sql (perg compare reads them)
        "perg_row_outcomes",
        "perg_metric_groups",
        "perg_metric_counts",
        "perg_metric_failures",
        "perg_metric_values",
        "perg_extraction_pairs",
    }
)
METRIC_MACROS = frozenset({"perg_wilson", "perg_percent"})
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {"range", "generate_series", "unnest", "json_each", "json_tree"}
)
MAX_SQL_CHARS = 20_000
MAX_NESTING = 64  # brackets open at once in the text
MAX_TREE_DEPTH = 1_000  # levels of the serialized tree

_FUNCTIONS = frozenset(name.lower() for name in ALLOWED_FUNCTIONS) | METRIC_MACROS
_QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE"})
_TABLE_REFS = frozenset(
    {"BASE_TABLE", "JOIN", "SUBQUERY", "TABLE_FUNCTION", "EXPRESSION_LIST", "EMPTY", "SHOW_REF"}
)
_OTHER_TYPED = frozenset(
    {
        "ORDER_MODIFIER",
        "LIMIT_MODIFIER",
        "LIMIT_PERCENT_MODIFIER",
        "DISTINCT_MODIFIER",
        "ORDER_DEFAULT",
        "ASCENDING",
        "DESCENDING",
    }
)
_EXPRESSIONS = frozenset(
    {
        "BETWEEN",
        "CASE",
        "CAST",
        "COLLATE",
        "COLUMN_REF",
        "COMPARISON",
        "CONJUNCTION",
        "CONSTANT",
        "FUNCTION",
        "LAMBDA",
        "OPERATOR",
        "POSITIONAL_REFERENCE",
        "STAR",
        "SUBQUERY",
        "TYPE",
        "WINDOW",
    }
)
# Bare words DuckDB answers from the session rather than from a column.
_SESSION_WORDS = frozenset(
    {
        "current_user",
        "user",
        "session_user",
        "current_role",
        "current_catalog",
        "current_schema",
        "current_database",
        "current_query",
    }
)
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*\Z")
_FORMAT_FUNCTIONS = frozenset({"printf", "format"})
# A width or precision of 4+ digits, one taken from an argument (*), or a nested {} field.
_WIDE_FORMAT = re.compile(r"\d{4,}|\*|\{[^{}]*\{")


class QueryRefused(InputError):
    """The query is not a single read-only SELECT over the results store; the message says why."""


class _Parser:
    """A private in-memory DuckDB, hardened, that only parses (``json_serialize_sql``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None

    def tree(self, sql: str) -> Any:
        with self._lock:
            if self._con is None:
                self._con = duckdb.connect(":memory:")
                harden(self._con)
            row = self._con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
        try:
            return orjson.loads(row[0] if row else b"{}")
        except (orjson.JSONDecodeError, RecursionError) as exc:
            raise QueryRefused("the query is nested too deeply") from exc


_PARSER = _Parser()


def check_query(sql: str, tables: Iterable[str] = DOCUMENTED_TABLES) -> None:
    """Raise :class:`QueryRefused` unless ``sql`` is one SELECT that the guard allows."""
    if len(sql) > MAX_SQL_CHARS:
        raise QueryRefused(f"the query is longer than {MAX_SQL_CHARS} characters")
    _check_nesting(sql)
    try:
        single_select(sql)
    except EngineRefused as exc:
        raise QueryRefused(str(exc)) from exc
    try:
        tree = _PARSER.tree(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"the query does not parse: {first_line(exc)}") from exc
    if not isinstance(tree, dict) or tree.get("error") is not False:
        message = tree.get("error_message") if isinstance(tree, dict) else None
        raise QueryRefused(f"the query cannot be checked: {message or 'no syntax tree'}")
    statements = tree.get("statements")
    if not isinstance(statements, list) or len(statements) != 1:
        raise QueryRefused("exactly one statement is allowed")
    _Walk(frozenset(t.lower() for t in tables)).run(statements[0])


def _check_nesting(sql: str) -> None:
    if bracket_depth(sql) > MAX_NESTING:
        raise QueryRefused(f"the query nests brackets more than {MAX_NESTING} levels deep")


Scope = frozenset[str]


class _Walk:
    """An explicit-stack walk of the serialized tree (no Python recursion, so no RecursionError
    however deep the tree)."""

    def __init__(self, tables: frozenset[str]) -> None:
        self.tables = tables
        self.stack: list[tuple[Any, Scope, int]] = []

    def run(self, root: Any) -> None:
        self.stack.append((root, frozenset(), 0))
        while self.stack:
            node, scope, depth = self.stack.pop()
            if depth > MAX_TREE_DEPTH:
                raise QueryRefused("the query is nested too deeply")
            if isinstance(node, list):
                self.stack.extend((child, scope, depth + 1) for child in node)
            elif isinstance(node, dict):
                self._visit(node, scope, depth)

    def _push(self, node: dict[str, Any], scope: Scope, depth: int, *skip: str) -> None:
        self.stack.extend((v, scope, depth + 1) for k, v in node.items() if k not in skip)

    def _visit(self, node: dict[str, Any], scope: Scope, depth: int) -> None:
        kind = node.get("class")
        if isinstance(kind, str):
            self._expression(kind, node)
            self._push(node, scope, depth)
            return
        kind = node.get("type")
        if not isinstance(kind, str):  # a plain part of a node: arguments, literals, types
            self._push(node, scope, depth)
        elif kind in _QUERY_NODES:
            self._query_node(node, scope, depth, None)
        elif kind == "BASE_TABLE":
            self._base_table(node, scope)
            self._push(node, scope, depth)
        elif kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            _check_name(function, "table function", ALLOWED_TABLE_FUNCTIONS)
            self._push(function, scope, depth, "function_name", "qualified_name")
            self._push(node, scope, depth, "function")
        elif kind == "SHOW_REF":
            if node.get("query") is None or node.get("show_type") not in ("DESCRIBE", "SUMMARY"):
                raise QueryRefused("SHOW is not allowed; DESCRIBE or SUMMARIZE a query or a table")
            self._push(node, scope, depth)
        elif kind == "PIVOT":
            for pivot in node.get("pivots") or []:
                if pivot.get("pivot_enum") or not (
                    pivot.get("entries") or pivot.get("unpivot_names")
                ):
                    raise QueryRefused("PIVOT needs an explicit IN (...) list of values")
            self._push(node, scope, depth)
        elif kind in _TABLE_REFS or kind in _OTHER_TYPED:
            self._push(node, scope, depth)
        else:
            raise QueryRefused(f"{_readable(kind)} is not allowed in a live query")

    def _query_node(
        self, node: dict[str, Any], scope: Scope, depth: int, recursive_name: str | None
    ) -> None:
        entries = (node.get("cte_map") or {}).get("map") or []
        if not isinstance(entries, list):
            raise QueryRefused("the query's WITH clause cannot be checked")
        visible = scope
        for entry in entries:
            name, value = str(entry.get("key", "")).lower(), entry.get("value") or {}
            body = value.get("query_node")
            if not _IDENTIFIER.match(name):
                raise QueryRefused(f"CTE names must be plain identifiers, not {name!r}")
            if not isinstance(body, dict):
                raise QueryRefused(f"CTE {name!r} cannot be checked")
            self._push(value, visible, depth, "query_node")
            if (
                body.get("type") == "RECURSIVE_CTE_NODE"
                and str(body.get("cte_name")).lower() == name
            ):
                self._query_node(body, visible, depth + 1, name)
            else:
                self.stack.append((body, visible, depth + 1))
            visible = visible | {name}
        if recursive_name is None:
            self._push(node, visible, depth, "cte_map")
        else:  # only the recursive part of a recursive CTE sees the CTE itself
            self._push(node, visible, depth, "cte_map", "right")
            self.stack.append((node.get("right"), visible | {recursive_name}, depth + 1))

    def _base_table(self, node: dict[str, Any], scope: Scope) -> None:
        table = str(node.get("table_name", ""))
        path = (node.get("qualified_name") or {}).get("path", [table])
        if node.get("schema_name") or node.get("catalog_name") or path not in ([], [table]):
            raise QueryRefused(f"qualified table names are not allowed: read {table!r} unqualified")
        if node.get("at_clause") is not None:
            raise QueryRefused("AT (time travel) is not allowed")
        if table.lower() not in scope and table.lower() not in self.tables:
            known = ", ".join(sorted(self.tables))
            raise QueryRefused(f"unknown table {table!r}: queries may read only {known}")

    def _expression(self, kind: str, node: dict[str, Any]) -> None:
        if kind not in _EXPRESSIONS:
            raise QueryRefused(f"{_readable(kind)} expressions are not allowed in a live query")
        if kind in ("FUNCTION", "WINDOW"):
            name = _check_name(node, "function", _FUNCTIONS)
            if name in _FORMAT_FUNCTIONS:
                _check_format(node, name)
        elif kind == "COLUMN_REF":
            names = node.get("column_names") or []
            if len(names) == 1 and str(names[0]).lower() in _SESSION_WORDS:
                raise QueryRefused(f"{names[0]} is not allowed in a live query")


def _check_name(node: dict[str, Any], what: str, allowed: frozenset[str]) -> str:
    name = str(node.get("function_name", "")).lower()
    path = (node.get("qualified_name") or {}).get("path", [])
    qualified = (
        node.get("schema")
        or node.get("catalog")
        or [str(p).lower() for p in path] not in ([], [name])
    )
    if qualified:
        raise QueryRefused(f"qualified function names are not allowed: call {name}() unqualified")
    if name not in allowed:
        raise QueryRefused(f"{what} {name}() is not allowed in a live query")
    return name


def _check_format(node: dict[str, Any], name: str) -> None:
    arguments = node.get("arguments") or node.get("children") or []
    first = arguments[0] if arguments else {}
    first = first.get("expression", first) if isinstance(first, dict) else {}
    literal = first.get("value") or first.get("literal") or {}
    text = literal.get("text") if isinstance(literal, dict) else None
    if first.get("class") != "CONSTANT" or not isinstance(text, str):
        raise QueryRefused(f"{name}() needs a constant format string")
    if _WIDE_FORMAT.search(text):
        raise QueryRefused(f"{name}() format widths must be constants below 1000")


def _readable(kind: str) -> str:
    return kind.removesuffix("_QUERY_NODE").removesuffix("_NODE").replace("_", " ")
