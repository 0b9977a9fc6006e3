"""The metrics engine: SQL views (perg/metrics.sql) over a DuckDB relation ``outcomes``."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow.parquet as pq

from perg._outcome_checks import (
    LETTER,
    RECORD,
    check_file,
    check_header,
    check_types,
    check_values,
)
from perg._text import text_table
from perg.dataset import SOURCES
from perg.demo_report import JudgeParse
from perg.errors import InputError, first_line
from perg.protocol import METHODS, SETTINGS

# The `outcomes` relation: column -> DuckDB type.
OUTCOME_TYPES: dict[str, str] = {
    "run_id": "VARCHAR",
    "row_id": "INTEGER",
    "source": "VARCHAR",
    "category": "VARCHAR",
    "preference": "VARCHAR",
    "setting": "VARCHAR",
    "method": "VARCHAR",
    "gold_option": "VARCHAR",
    "nopref_answer": "VARCHAR",
    "pref_answer": "VARCHAR",
    "judge_rating": "INTEGER",
    "judge_outcome": "VARCHAR",
    "nopref_extraction": "VARCHAR",
    "pref_extraction": "VARCHAR",
    "parse_fallback": "BOOLEAN",
    "parse_failure": "BOOLEAN",
    "finish_reason": "VARCHAR",
    # The run's protocol's judge.followed_threshold (followed = judge_rating >= it).
    "followed_threshold": "INTEGER",
    # The run's answer extractor (rules, llm, lora) and the rules parser's letters beside it.
    "extractor": "VARCHAR",
    "nopref_rules_answer": "VARCHAR",
    "pref_rules_answer": "VARCHAR",
    # The repeated no-preference answer (noise floor); NULL when the baseline ran once.
    "nopref_repeat_answer": "VARCHAR",
    "nopref_repeat_extraction": "VARCHAR",
}
OUTCOME_COLUMNS: tuple[str, ...] = tuple(OUTCOME_TYPES)
REQUIRED_COLUMNS = (
    "source",
    "setting",
    "method",
    "row_id",
    "gold_option",
    "nopref_answer",
    "pref_answer",
    "judge_rating",
)
OFFLINE_RUN_ID = "offline"
# The answer columns of a results file: any value is accepted (see answer_values).
ANSWER_COLUMNS = ("nopref_answer", "pref_answer")
NO_OPTION = "-1"  # the authors' answer where no option was found
MISSING_ANSWER_METRICS = ("NoPrefInvalid", "PrefInvalid", "MCValidDrop", "PDDF")

Grouping = Literal["source", "preference", "subject"]
VIEWS: dict[Grouping, tuple[str, str]] = {
    "source": ("metrics_by_source", "source"),
    "preference": ("metrics_by_preference", "preference"),
    "subject": ("metrics_by_subject", "category"),
}


def metrics_sql() -> str:
    """The text of perg/metrics.sql."""
    return resources.files("perg").joinpath("metrics.sql").read_text(encoding="utf-8")


def create_metric_views(con: duckdb.DuckDBPyConnection) -> None:
    """Create (or replace) the metric views over the existing relation ``outcomes``."""
    con.execute(metrics_sql())


def compute_metrics(
    con: duckdb.DuckDBPyConnection, run_id: str | None = None, *, by: Grouping = "source"
) -> list[dict[str, object]]:
    """Metric rows of one view (creating the views when absent), in a stable order."""
    view, key = VIEWS[by]
    query = f"SELECT * FROM {view}" + (" WHERE run_id = ?" if run_id is not None else "")
    rows = _view_rows(con, query, [run_id] if run_id is not None else [])
    return sorted(rows, key=lambda row: _order(row, key))


def _view_rows(
    con: duckdb.DuckDBPyConnection, query: str, params: list[Any]
) -> list[dict[str, Any]]:
    """The rows of a query over the metric views, creating the views first when a relation
    ``outcomes`` has none yet (one statement, not a catalog lookup and then the query: the
    live API answers this while the sink writes)."""
    try:
        result = con.execute(query, params)
    except duckdb.CatalogException:
        create_metric_views(con)
        result = con.execute(query, params)
    names = [d[0] for d in result.description]
    return [dict(zip(names, values, strict=True)) for values in result.fetchall()]


def _rank(value: object, known: tuple[str, ...]) -> tuple[int, str]:
    text = str(value)
    return (known.index(text), "") if text in known else (len(known), text)


def _order(row: dict[str, object], key: str) -> tuple[object, ...]:
    groups = (*SOURCES, "full") if key == "source" else ()
    return (
        str(row["run_id"]),
        _rank(row["setting"], SETTINGS),
        _rank(row["method"], METHODS),
        _rank(row[key], groups),
    )


def _reader(con: duckdb.DuckDBPyConnection, path: Path) -> duckdb.DuckDBPyRelation:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return con.read_csv(str(path), header=True, all_varchar=True)
    # Types inferred from every record (sample_size -1): a value of another kind on line
    # 30,000 makes its column text, and the checks then name that line.
    if suffix in (".jsonl", ".ndjson"):
        return con.read_json(str(path), format="newline_delimited", sample_size=-1)
    if suffix == ".json":
        return con.read_json(str(path), sample_size=-1)
    if suffix in (".parquet", ".pq"):
        return con.read_parquet(str(path))
    raise InputError(f"{path}: unknown results format (use .csv, .jsonl, .json or .parquet)")


def load_outcomes_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    *,
    run_name: str | None = None,
    followed_threshold: Callable[[], int] | None = None,
) -> None:
    """Load a results file into TABLE ``outcomes``; missing optional columns are NULL/false.

    ``run_name`` (default: the file's run_id column, else 'offline') names the run. Every value
    is validated first (perg/_outcome_checks.py): a bad one raises :class:`InputError` naming
    the file, line and column, and nothing is loaded.
    ``followed_threshold`` gives the threshold of rows without a ``followed_threshold`` value
    (the protocol the results were produced with); called only when needed.
    """
    try:
        check_file(path)
        check_header(path, _parquet_columns(path))
        raw = _reader(con, path)
        raw.create("perg_raw_outcomes")  # a table: its rowid is the record's place in the file
    except (duckdb.Error, OSError) as exc:
        raise InputError(_read_error(path, exc)) from exc
    try:
        _load_outcomes(con, path, raw, run_name)
    finally:
        con.execute("DROP TABLE IF EXISTS perg_raw_outcomes")
    _fill_threshold(con, path, followed_threshold)


def _parquet_columns(path: Path) -> list[str] | None:
    """The top-level column names of a Parquet file as written (DuckDB renames a repeated one)."""
    if path.suffix.lower() not in (".parquet", ".pq"):
        return None
    try:
        return list(pq.read_schema(path).names)
    except (OSError, ValueError):  # not Parquet: DuckDB's reader says so in its words
        return None


# DuckDB's words for a JSON object naming a key twice, and for where a read failed.
_DUPLICATE_KEY = re.compile(r'has duplicate key "([^"]*)"')
_READ_AT = re.compile(r"in (?:line|record/value) (\d+)")


def _read_error(path: Path, exc: BaseException) -> str:
    """``path[:line]: field: problem`` of a file its reader refused."""
    text = str(exc)
    at = _READ_AT.search(text)
    where = f"{path}:{at.group(1)}" if at and path.suffix.lower() != ".json" else str(path)
    if at and path.suffix.lower() == ".json":
        where = f"{path}: row {at.group(1)}"
    key = _DUPLICATE_KEY.search(text)
    if key is not None:
        return f"{where}: {key.group(1)}: repeated key (each key once per object)"
    return f"{where}: file: cannot read results: {first_line(exc)}"


def _describe_columns(path: Path, raw: duckdb.DuckDBPyRelation) -> str:
    """What the file holds instead of the required columns, for the message that lacks them."""
    present = list(raw.columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    lower = {c.strip().lower(): c for c in present}
    misspelt = [f"{lower[c]!r}" for c in missing if c in lower]
    if misspelt:
        return (
            f"{path}:1: {', '.join(missing)}: missing required column(s); the file has "
            f"{', '.join(misspelt)}: column names are lower case"
        )
    if len(set(missing)) == len(REQUIRED_COLUMNS):  # nothing of an outcomes file at all
        found = ", ".join(repr(c) for c in present[:6]) + (", ..." if len(present) > 6 else "")
        shape = {
            ".json": "a JSON array of objects, one per outcome (or use .jsonl, one per line)",
            ".jsonl": "one JSON object per line, one per outcome",
            ".ndjson": "one JSON object per line, one per outcome",
        }.get(path.suffix.lower(), "a header line naming the columns")
        return (
            f"{path}: file: none of the required columns ({', '.join(REQUIRED_COLUMNS)}); "
            f"read column(s) {found}; expected {shape}"
        )
    return f"{path}: missing required column(s): {', '.join(missing)}"


def _load_outcomes(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    raw: duckdb.DuckDBPyRelation,
    run_name: str | None,
) -> None:
    present = set(raw.columns)
    # A JSON column mixing kinds (answers "A" and -1) is read as type JSON: its values as text.
    mixed = {c for c, kind in zip(raw.columns, raw.types, strict=True) if str(kind) == "JSON"}
    if any(c not in present for c in REQUIRED_COLUMNS):
        raise InputError(_describe_columns(path, raw))
    reader_types = {c: str(kind) for c, kind in zip(raw.columns, raw.types, strict=True)}
    try:
        con.execute(
            "CREATE OR REPLACE TEMP VIEW perg_raw_records AS "
            f"SELECT rowid AS {RECORD}, "
            + ", ".join(
                f'"{c}"->>\'$\' AS "{c}"' if c in mixed else f'"{c}"'
                for c in OUTCOME_COLUMNS
                if c in present
            )
            + " FROM perg_raw_outcomes"
        )
        raw_types = {c: t for c, t in OUTCOME_TYPES.items() if c in present}
        check_types(con, path, "perg_raw_records", raw_types, reader_types)
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW perg_typed_outcomes AS SELECT {RECORD}, "
            + ", ".join(_column_expr(c, present, run_name) for c in OUTCOME_COLUMNS)
            + " FROM perg_raw_records"
        )
        check_values(con, path, "perg_typed_outcomes")
        con.execute(
            "CREATE OR REPLACE TABLE outcomes AS SELECT "
            + ", ".join(OUTCOME_COLUMNS)
            + f" FROM perg_typed_outcomes ORDER BY {RECORD}"
        )
    finally:
        con.execute("DROP VIEW IF EXISTS perg_typed_outcomes")
        con.execute("DROP VIEW IF EXISTS perg_raw_records")


def _fill_threshold(
    con: duckdb.DuckDBPyConnection, path: Path, threshold: Callable[[], int] | None
) -> None:
    found = con.execute("SELECT count(*) FROM outcomes WHERE followed_threshold IS NULL").fetchone()
    if found is None or found[0] == 0:
        return
    if threshold is None:
        raise InputError(
            f"{path}: column followed_threshold is missing or empty on {found[0]} row(s), and no "
            "protocol gives it"
        )
    con.execute(
        "UPDATE outcomes SET followed_threshold = ? WHERE followed_threshold IS NULL", [threshold()]
    )


def _column_expr(column: str, present: set[str], run_name: str | None) -> str:
    kind = OUTCOME_TYPES[column]
    if column == "run_id" and (run_name is not None or column not in present):
        name = run_name if run_name is not None else OFFLINE_RUN_ID
        return "'" + name.replace("'", "''") + "' AS run_id"
    if column not in present:
        return f"{'false' if kind == 'BOOLEAN' else 'NULL'}::{kind} AS {column}"
    value = f'TRY_CAST("{column}" AS {kind})'
    if column in ANSWER_COLUMNS:  # model output, kept as is: correct only when equal to gold
        value = f"nullif({value}, '')"
    elif kind == "VARCHAR":
        value = f"nullif(trim({value}), '')"
    if kind == "BOOLEAN":
        value = f"coalesce({value}, false)"
    return f"{value} AS {column}"


def compute_agreement(
    con: duckdb.DuckDBPyConnection, run_id: str | None = None
) -> list[dict[str, Any]]:
    """Rows of the ``extraction_agreement`` view pooled over the run (setting 'all')."""
    query = "SELECT * FROM extraction_agreement WHERE setting = 'all'"
    if run_id is not None:
        query += " AND run_id = ?"
    return _view_rows(con, query + " ORDER BY run_id", [run_id] if run_id is not None else [])


def format_agreement(rows: list[dict[str, Any]]) -> list[str]:
    """One line per run: how often the rules parser and the model extractor disagree."""
    lines = []
    for row in rows:
        rate, low, high = row["disagree_rate"], row["disagree_rate_lo"], row["disagree_rate_hi"]
        lines.append(
            f"Extraction agreement, run {row['run_id']}: rules vs {row['extractor']} disagree on "
            f"{row['n_disagree']} of {row['n_answers']} answers ({_cell(rate, low, high)}%); "
            f"correctness differs on {row['n_correctness_differs']} "
            f"({_cell(row['correctness_differs_rate'])}%)"
        )
    return lines


def _cell(value: object, low: object = None, high: object = None) -> str:
    if not isinstance(value, float):
        return "-" if value is None else str(value)
    if isinstance(low, float) and isinstance(high, float):
        return f"{value:.1f} [{low:.1f}, {high:.1f}]"
    return f"{value:.1f}"


def format_metrics_table(rows: list[dict[str, object]]) -> str:
    """A plain-text table (one decimal) of metric rows from any metrics view."""
    if not rows:
        return "(no outcomes)"
    key = next(k for k in ("source", "preference", "category") if k in rows[0])
    header = ["run", "setting", "method", key, "n", "|Q*|"]
    header += ["BR [95% CI]", "noise BR [95% CI]", "AFR [95% CI]", "RER [95% CI]", "PVR"]
    table = [header]
    for row in rows:
        cells = [_cell(row[c]) for c in ("run_id", "setting", "method", key, "n_rows", "n_qstar")]
        metrics = ("BR", "noise_BR", "AFR", "RER")
        cells += [_cell(row[m], row[f"{m}_lo"], row[f"{m}_hi"]) for m in metrics]
        table.append([*cells, _cell(row["PVR"])])
    return text_table(table)


def answer_values(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Per answer column of TABLE ``outcomes``: how many values are no option letter (of
    which how many are the authors' -1, "no option found"), how many are empty, and the
    first value that is no letter (in file order), or None."""
    found = []
    for column in ANSWER_COLUMNS:
        other = f"({column} IS NOT NULL AND NOT regexp_full_match({column}, '{LETTER}'))"
        row = con.execute(
            f"SELECT count(*), count(*) FILTER ({other}), count(*) FILTER ({column} = ?), "
            f"count(*) FILTER ({column} IS NULL), arg_min({column}, rowid) FILTER ({other}) "
            "FROM outcomes",
            [NO_OPTION],
        ).fetchone()
        assert row is not None  # an aggregate without GROUP BY answers one row
        n_values, n_not_letter, n_no_option, n_empty, example = row
        found.append(
            {
                "column": column,
                "n_values": n_values,
                "n_not_letter": n_not_letter,
                "n_no_option": n_no_option,
                "n_empty": n_empty,
                "example": example,
            }
        )
    return found


def judge_parse(con: duckdb.DuckDBPyConnection) -> JudgeParse:
    """How many outcomes of TABLE ``outcomes`` a judge rated, where AFR is defined."""
    row = con.execute(
        "SELECT count(*), count(judge_rating), min(judge_rating), max(judge_rating) "
        "FROM outcomes WHERE setting <> 'irrelevant'"
    ).fetchone()
    assert row is not None  # an aggregate without GROUP BY answers one row
    return JudgeParse(asked=row[0], rated=row[1], lowest=row[2], highest=row[3])


def nopref_disagreement(con: duckdb.DuckDBPyConnection) -> str | None:
    """A note when a row of one run has different no-preference answers in its settings and
    methods against one gold letter: each setting x method then has its own Q* (the authors'
    files, one generation per setting x method), while a perg run shares one baseline."""
    found = con.execute(
        "SELECT run_id, row_id, list(setting || '/' || method || ' ' || "
        "coalesce(chr(39) || nopref_answer || chr(39), 'empty') ORDER BY rowid), "
        "count(*) OVER () FROM outcomes GROUP BY run_id, row_id, gold_option "
        "HAVING count(DISTINCT coalesce(nopref_answer, '')) > 1 "
        "ORDER BY run_id, min(rowid) LIMIT 1"
    ).fetchone()
    if found is None:
        return None
    run, row_id, cells, count = found
    shown = ", ".join(cells[:3]) + (", ..." if len(cells) > 3 else "")
    return (
        f"nopref_answer: row {row_id} of run {run} has different no-preference answers ({shown})"
        f"{f' and {count - 1} more rows' if count > 1 else ''}; each setting x method counts "
        "its own in Q*, so their Q* differ"
    )


def format_answer_values(rows: list[dict[str, Any]]) -> list[str]:
    """One line per answer column holding values that are no option letter (or empty)."""
    lines = []
    for row in rows:
        if not (row["n_not_letter"] or row["n_empty"]):
            continue
        example = str(row["example"])
        shown = repr(example if len(example) <= 40 else example[:40] + "...")
        lines.append(
            f"Answers, {row['column']}: {row['n_not_letter']} of {row['n_values']} values are "
            f"no option letter ({row['n_no_option']} are {NO_OPTION}, no option found"
            + (f"; e.g. {shown}" if row["n_not_letter"] else "")
            + f"), {row['n_empty']} empty; all of them count as wrong"
        )
    return lines


def format_missing_answers_table(rows: list[dict[str, object]]) -> str:
    """A plain-text table of the missing-answer metrics and Pref-Aligner's relative RER
    reduction (one decimal) of metric rows from any metrics view."""
    if not rows:
        return "(no outcomes)"
    key = next(k for k in ("source", "preference", "category") if k in rows[0])
    header = ["run", "setting", "method", key, *MISSING_ANSWER_METRICS, "RER reduction"]
    table = [header]
    for row in rows:
        cells = [_cell(row[c]) for c in ("run_id", "setting", "method", key)]
        values = [*MISSING_ANSWER_METRICS, "RER_relative_reduction"]
        table.append(cells + [_cell(row[m]) for m in values])
    return text_table(table)
