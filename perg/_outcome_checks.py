"""Validation of a results file before ``perg score`` scores it.

Every value is checked against the contract of the ``outcomes`` relation (its types and
vocabularies: settings, methods, sources, gold letters, Likert ratings 1-5...), and the first
bad value of each check is reported as ``path:line: column: problem`` (``path: row N: ...`` for
Parquet and JSON arrays, which have no lines), with how many rows share the problem. A file
that fails a check is never scored: a silently wrong metric is worse than an error.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import duckdb

from perg.dataset import LETTERS, SOURCES
from perg.errors import InputError
from perg.extraction import EXTRACTORS, ExtractionPath
from perg.judging import RATING_MAX, RATING_MIN, JudgeOutcome
from perg.protocol import METHODS, SETTINGS

__all__ = [
    "LETTER",
    "RECORD",
    "check_file",
    "check_header",
    "check_types",
    "check_values",
]

LETTER = f"[{LETTERS[0]}-{LETTERS[-1]}]"  # an option letter, as a regular expression
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
RECORD = "__perg_record"  # the column holding a row's 0-based index in the file


TEXT_FORMATS = (".csv", ".jsonl", ".ndjson", ".json")
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def check_file(path: Path) -> None:
    """``path`` is a regular, non-empty file and, for the text formats, UTF-8 text."""
    if not path.exists():
        raise InputError(f"{path}: no such results file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a results file")
    if not path.is_file():
        raise InputError(f"{path}: is not a regular file (a pipe or a device?): save it to a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: results file is empty")
    if path.suffix.lower() in TEXT_FORMATS:
        _check_utf8(path)


def _check_utf8(path: Path) -> None:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if number == 1 and (line.startswith(UTF16_BOMS) or b"\x00" in line):
                raise InputError(f"{path}:1: file: UTF-16 text, not UTF-8: save it as UTF-8")
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                byte = line[exc.start]
                raise InputError(
                    f"{path}:{number}: file: not UTF-8 text (byte 0x{byte:02x} at column "
                    f"{exc.start + 1}; Latin-1?): save it as UTF-8"
                ) from exc


def check_header(path: Path, columns: list[str] | None = None) -> None:
    """Each column is named once (DuckDB would rename the second silently): the CSV header,
    else the file's ``columns`` as its reader lists them (Parquet keeps duplicates). Every
    CSV record has as many fields as the header."""
    if path.suffix.lower() == ".csv":
        _check_csv_shape(path)
    elif columns is not None:
        _check_unique_names(path, columns, "")


def _check_unique_names(path: Path, header: list[str], line: str) -> None:
    for column in dict.fromkeys(header):
        positions = [str(i + 1) for i, name in enumerate(header) if name == column]
        if len(positions) > 1:
            where = ", ".join(positions)
            raise InputError(f"{path}{line}: {column}: duplicated column (columns {where})")


def _check_csv_shape(path: Path) -> None:
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        _check_unique_names(path, header, ":1")
        start = reader.line_num + 1
        try:
            for fields in reader:
                if fields and len(fields) != len(header):
                    raise InputError(
                        f"{path}:{start}: file: {len(fields)} fields, the header (line 1) has "
                        f"{len(header)}"
                    )
                start = reader.line_num + 1
        except csv.Error:  # what the csv module refuses (a huge field) DuckDB may still read
            return


def check_types(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    table: str,
    types: dict[str, str],
    raw_types: dict[str, str],
) -> None:
    """The raw rows in ``table`` exist (a header alone is refused) and every non-empty value
    casts to its column's type (``raw_types``: the reader's). Whole numbers must be whole:
    DuckDB would round 3.7 to 4, and a JSON ``true`` is no number (it would cast to 1)."""
    if _count(con, table) == 0:
        where = f"{path}:2" if path.suffix.lower() == ".csv" else str(path)
        raise InputError(f"{where}: file: no outcome rows (only a header)")
    for column, kind in types.items():
        value = f'"{column}"'
        wrong = f"TRY_CAST({value} AS {kind}) IS NULL"
        if kind == "INTEGER":
            wrong += f" OR TRY_CAST({value} AS DOUBLE) <> TRY_CAST({value} AS INTEGER)"
            if raw_types.get(column) == "BOOLEAN":  # JSON true would cast to 1
                wrong = "true"
        found = _first(con, table, column, f"{value} IS NOT NULL AND ({wrong})")
        if found is not None:
            _fail(path, found, column, _cast_problem(found[1], kind))


def _cast_problem(value: object, kind: str) -> str:
    if kind != "INTEGER":
        return f"{value!r} is not a valid {kind}"
    if isinstance(value, bool):
        return f"{str(value).lower()} is a boolean, not a whole number"
    try:
        whole = float(str(value)).is_integer()
    except ValueError:
        whole = False
    if whole:
        return f"{value!r} is out of range ({INT32_MIN}..{INT32_MAX})"
    return f"{value!r} is not a whole number"


def check_values(con: duckdb.DuckDBPyConnection, path: Path, table: str) -> None:
    """The typed outcomes in ``table`` use the known vocabularies, give a gold letter, and
    name each (run, setting, method, row) once."""
    for column in ("source", "setting", "method", "row_id", "gold_option"):
        found = _first(con, table, column, f"{column} IS NULL")
        if found is not None:
            _fail(path, found, column, "empty (a value is required)")
    known = {"setting": SETTINGS, "method": METHODS, "source": SOURCES}
    optional = {"judge_outcome": get_args(JudgeOutcome)}
    optional |= {c: get_args(ExtractionPath) for c in ("nopref_extraction", "pref_extraction")}
    optional["extractor"] = EXTRACTORS
    for column, values in (known | optional).items():
        listed = ", ".join(f"'{v}'" for v in values)
        found = _first(con, table, column, f"{column} NOT IN ({listed})")
        if found is not None:
            message = f"unknown {column} {found[1]!r} (known: {', '.join(values)})"
            _fail(path, found, column, message)
    found = _first(con, table, "row_id", "row_id < 0")
    if found is not None:
        _fail(path, found, "row_id", f"{found[1]} is negative")
    # Only the gold answer must be a letter: an answer is model output, whatever it is (the
    # authors' files hold -1 where no option was found, the odd free text, empty values), and
    # it is correct only when it equals the gold letter (answer_values() reports the others).
    found = _first(con, table, "gold_option", f"NOT regexp_full_match(gold_option, '{LETTER}')")
    if found is not None:
        _fail(path, found, "gold_option", f"{found[1]!r} is not an option letter {LETTER}")
    scale = f"{RATING_MIN}..{RATING_MAX}"
    found = _first(
        con, table, "judge_rating", f"judge_rating NOT BETWEEN {RATING_MIN} AND {RATING_MAX}"
    )
    if found is not None:
        message = f"{found[1]} is outside the scale {scale} (leave it empty if unparseable)"
        _fail(path, found, "judge_rating", message)
    found = _first(
        con,
        table,
        "followed_threshold",
        f"followed_threshold NOT BETWEEN {RATING_MIN} AND {RATING_MAX}",
    )
    if found is not None:
        message = f"{found[1]} is outside the rating scale {scale} (followed = rating >= it)"
        _fail(path, found, "followed_threshold", message)
    _check_unique(con, path, table)


def _check_unique(con: duckdb.DuckDBPyConnection, path: Path, table: str) -> None:
    """Each (run, setting, method, row) is named once, so it has one gold option. The gold
    letter of a row may differ between settings or methods of one run: the authors shuffled
    TruthfulQA's options per run, and a file may combine several of their runs."""
    duplicate = _one(
        con,
        f"SELECT {RECORD}, run_id, setting, method, row_id, first_value({RECORD}) OVER w "
        f"FROM {table} "
        f"WINDOW w AS (PARTITION BY run_id, setting, method, row_id ORDER BY {RECORD}) "
        f"QUALIFY row_number() OVER w = 2 ORDER BY {RECORD} LIMIT 1",
    )
    if duplicate is not None:
        record, run, setting, method, row_id, first = duplicate
        raise InputError(
            f"{_where(path, record)}: row_id: duplicate outcome for run {run}, "
            f"{setting}/{method}, row {row_id} (first on {_position(path, first)})"
        )


def _one(con: duckdb.DuckDBPyConnection, query: str) -> tuple[Any, ...] | None:
    """The first row of ``query`` (the result is fetched whole: no result is left open)."""
    rows = con.execute(query).fetchall()
    return rows[0] if rows else None


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    found = _one(con, f"SELECT count(*) FROM {table}")
    return int(found[0]) if found else 0


def _first(
    con: duckdb.DuckDBPyConnection, table: str, column: str, where: str
) -> tuple[int, object, int] | None:
    """(record index, value, number of matching rows) of the first row matching ``where``."""
    found = _one(
        con,
        f'SELECT {RECORD}, "{column}", count(*) OVER () FROM {table} '
        f"WHERE {where} ORDER BY {RECORD} LIMIT 1",
    )
    return (int(found[0]), found[1], int(found[2])) if found is not None else None


def _fail(path: Path, found: tuple[int, object, int], column: str, message: str) -> None:
    record, _, count = found
    more = f" ({count} rows in all)" if count > 1 else ""
    raise InputError(f"{_where(path, record)}: {column}: {message}{more}")


def _where(path: Path, index: int) -> str:
    """``path:line`` of the record at 0-based ``index`` in the file, else ``path: row N``."""
    line = _line(path, index)
    return f"{path}:{line}" if line is not None else f"{path}: row {index + 1}"


def _position(path: Path, index: int) -> str:
    line = _line(path, index)
    return f"line {line}" if line is not None else f"row {index + 1}"


def _line(path: Path, index: int) -> int | None:
    """The first line of the record at ``index``; None for formats without lines."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        starts = _csv_record_lines(path)
    elif suffix in (".jsonl", ".ndjson"):
        starts = _jsonl_record_lines(path)
    else:
        return None
    try:
        return next((line for number, line in enumerate(starts) if number == index), None)
    except csv.Error:  # the csv module refuses what DuckDB read (a huge field): no line then
        return None


def _csv_record_lines(path: Path) -> Iterator[int]:
    """The first line of each CSV record after the header (blank lines are no records)."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        start = reader.line_num + 1
        for fields in reader:
            if fields:
                yield start
            start = reader.line_num + 1


def _jsonl_record_lines(path: Path) -> Iterator[int]:
    with path.open(encoding="utf-8-sig", errors="replace") as fh:
        for number, content in enumerate(fh, start=1):
            if content.strip():
                yield number
