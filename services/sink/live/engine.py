"""The engine that answers user SQL: it can read the results store and nothing else.

This layer holds even if the statement guard (:mod:`services.sink.live.sqlguard`) has a hole:

* **no file or network access**: the database is *hardened* before any user query runs:
  ``enable_external_access = false`` (no COPY, EXPORT, ATTACH of files, ``read_*``, ``glob``,
  replacement scans of paths or URLs, INSTALL, secrets on disk), extension auto-install and
  auto-load off, community extensions off, Python replacement scans off, and then
  ``lock_configuration = true`` so that no later ``SET``/``RESET``/``PRAGMA`` can undo any of it.
  These are database-wide settings: the sink's own writes (Arrow upserts into its tables) do
  not need external access, and snapshots are written through pyarrow
  (:mod:`services.sink.live.snapshots`).
* **no writes**: each query runs on a cursor of its own inside ``BEGIN TRANSACTION READ ONLY``
  (DuckDB refuses any change to the database in it, including a DELETE hidden in a CTE) that is
  always rolled back, and the cursor is closed afterwards (temporary objects die with it).
* **one SELECT statement**: DuckDB's own parser must find exactly one statement of type
  SELECT, so CHECKPOINT, VACUUM, ATTACH, SET, ... never reach the engine.

The fallback reader of the command line opens the results file itself with the same settings
and ``read_only=True`` (:func:`open_read_only`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Protocol

import duckdb

from perg.errors import InputError, first_line

# Settings applied, in this order, before any user query; the last one locks them all.
HARDENED_SETTINGS: tuple[tuple[str, bool], ...] = (
    ("enable_external_access", False),
    ("autoinstall_known_extensions", False),
    ("autoload_known_extensions", False),
    ("allow_community_extensions", False),
    ("python_enable_replacements", False),
    ("python_scan_all_frames", False),
    ("lock_configuration", True),
)


class EngineRefused(InputError):
    """The engine will not run this text: it is not exactly one SELECT statement."""


class Database(Protocol):
    """Anything that hands out a connection of its own to the database: a ResultStore or a
    DuckDB connection."""

    def cursor(self) -> duckdb.DuckDBPyConnection: ...


def harden(con: duckdb.DuckDBPyConnection) -> None:
    """Apply :data:`HARDENED_SETTINGS` to the whole database of ``con`` (idempotent)."""
    locked = con.execute("SELECT current_setting('lock_configuration')").fetchone()
    if locked is not None and locked[0]:
        _check_hardened(con)
        return
    for name, value in HARDENED_SETTINGS:
        con.execute(f"SET {name} = {'true' if value else 'false'}")
    _check_hardened(con)


def _check_hardened(con: duckdb.DuckDBPyConnection) -> None:
    for name, value in HARDENED_SETTINGS:
        row = con.execute("SELECT current_setting(?)", [name]).fetchone()
        if row is None or bool(row[0]) != value:
            raise RuntimeError(
                f"the database was locked with {name} = {row[0] if row else None}, not {value}: "
                "it cannot serve live SQL safely"
            )


def open_read_only(path: Path) -> duckdb.DuckDBPyConnection:
    """The results file opened read-only, hardened from the start."""
    config: dict[str, str | bool | int | float | list[str]] = {
        name: value for name, value in HARDENED_SETTINGS
    }
    return duckdb.connect(str(path), read_only=True, config=config)


def single_select(sql: str) -> None:
    """Raise :class:`EngineRefused` unless DuckDB parses ``sql`` as exactly one SELECT."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise EngineRefused(f"the query does not parse: {first_line(exc)}") from exc
    if len(statements) != 1:
        raise EngineRefused(f"exactly one statement is allowed, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise EngineRefused(f"only SELECT queries are allowed, not {kind.name}")


@contextmanager
def read_only_cursor(db: Database) -> Iterator[duckdb.DuckDBPyConnection]:
    """A fresh cursor inside a read-only transaction that is rolled back and closed on exit."""
    with closing(db.cursor()) as con:
        con.execute("BEGIN TRANSACTION READ ONLY")
        try:
            yield con
        finally:
            # an interrupted transaction may refuse; closing the cursor ends it anyway
            with suppress(duckdb.Error):
                con.execute("ROLLBACK")
