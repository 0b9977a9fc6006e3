"""The per-row explorer and the changed rows of two runs, read from the documented views.

Every request is validated here before any SQL runs (:func:`parse_row_filter`,
:func:`parse_changed_filter`): unknown parameters, values outside their vocabulary, pages out
of range are refused with a message naming the parameter. User values only ever reach DuckDB
as bound parameters (``$name``); the only SQL picked by a parameter is one of the fixed
fragments of :data:`OUTCOMES` and :data:`DISCORDANCE`. Texts a model wrote are bounded to
:data:`MAX_TEXT_CHARS` each (their full length is returned beside them).

Outcomes (the rules of ``perg_row_outcomes``): *broken* = right without a preference and
wrong with it; *repaired* = wrong without, right with; *not_followed* = a row of Q* whose
judge's rating is below the run's threshold (an AFR failure; AFR is undefined in the
irrelevant setting); *unresolved* = no option letter could be read;
*parse_fallback* / *parse_failure* = a structured rewrite did not parse; *dead_lettered* =
messages of the run a service gave up on (table ``dead_letters``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import duckdb

from perg.config import default_data_dir
from perg.dataset import SOURCES, DatasetError, Item, load_dataset
from perg.errors import InputError
from perg.protocol import Method, Setting

MAX_TEXT_CHARS = 20_000
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 25
MAX_PAGE = 1_000_000
MAX_VALUE_CHARS = 200

OUTCOMES: dict[str, str] = {
    "all": "true",
    "broken": "base_correct AND NOT pref_correct",
    "repaired": "NOT base_correct AND pref_correct",
    "not_followed": "base_correct AND followed IS FALSE",
    "unresolved": "unresolved",
    "parse_fallback": "fallback",
    "parse_failure": "failure",
}
# The same counts from the kept cells (perg_cells: the counters of perg_cell_contributions,
# summed), which a count without a row filter reads instead of the million outcomes.
CELL_COUNTS: dict[str, str] = {
    "all": "n_rows",
    "broken": "n_qstar - n_correct",
    "repaired": "n_union - n_qstar",
    "not_followed": "CASE WHEN afr_defined THEN n_qstar - n_followed ELSE 0 END",
    "unresolved": "n_unresolved",
    "parse_fallback": "n_fallback",
    "parse_failure": "n_failure",
}
DEAD_LETTERED = "dead_lettered"
OUTCOME_NAMES = (*OUTCOMES, DEAD_LETTERED)

# Per tested metric, the failure column of a Q* row; per direction, the discordant pairs
# (reference a, candidate b) that perg.compare's McNemar test counts.
FAILURE_COLUMNS = {"BR": "NOT pref_correct", "AFR": "NOT followed", "RER": "NOT robust"}
DISCORDANCE = {"broke": "NOT a.failed AND b.failed", "repaired": "a.failed AND NOT b.failed"}


class RowQueryError(InputError):
    """A parameter of a row query is malformed or unknown (HTTP 400)."""


class NotFound(InputError):
    """The run does not exist, nothing matches, or the page is past the end (HTTP 404)."""


@dataclass(frozen=True, slots=True)
class Page:
    number: int = 1
    size: int = DEFAULT_PAGE_SIZE

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size


@dataclass(frozen=True, slots=True)
class RowFilter:
    """What the explorer shows: every field None means no restriction."""

    setting: str | None = None
    method: str | None = None
    source: str | None = None
    subject: str | None = None
    preference: str | None = None  # a part of the preference text
    row_id: int | None = None
    outcome: str = "all"
    page: Page = Page()

    def described(self) -> str:
        given = [
            f"{name}={value}"
            for name in ("setting", "method", "source", "subject", "preference", "row_id")
            if (value := getattr(self, name)) is not None
        ]
        return ", ".join([*given, f"outcome={self.outcome}"])


@dataclass(frozen=True, slots=True)
class ChangedFilter:
    """Which discordant rows of a comparison: one metric, one direction, optionally one cell."""

    metric: str
    direction: str
    setting: str | None = None
    method: str | None = None
    source: str | None = None  # None or 'full': every source
    page: Page = Page()


def _int(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not lo <= int(raw) <= hi:
        raise RowQueryError(f"{name} must be a whole number from {lo} to {hi}, not {raw[:40]!r}")
    return int(raw)


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if raw not in allowed:
        raise RowQueryError(f"{name} must be one of {', '.join(allowed)}, not {raw[:40]!r}")
    return raw


def _text(query: Mapping[str, str], name: str) -> str | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_VALUE_CHARS or any(ord(c) < 32 for c in raw):
        raise RowQueryError(
            f"{name} must be at most {MAX_VALUE_CHARS} characters without control characters"
        )
    return raw


def _known(query: Mapping[str, str], names: tuple[str, ...]) -> None:
    unknown = sorted(set(query) - set(names))
    if unknown:
        raise RowQueryError(
            f"unknown parameter {unknown[0][:40]!r}; the parameters are {', '.join(names)}"
        )


def _page(query: Mapping[str, str]) -> Page:
    return Page(
        _int(query, "page", 1, 1, MAX_PAGE),
        _int(query, "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
    )


_SETTINGS: tuple[str, ...] = get_args(Setting)
_METHODS: tuple[str, ...] = get_args(Method)
_ROW_PARAMS = (
    "setting",
    "method",
    "source",
    "subject",
    "preference",
    "row_id",
    "outcome",
    "page",
    "page_size",
)
_CHANGED_PARAMS = (
    "reference",
    "candidate",
    "metric",
    "direction",
    "setting",
    "method",
    "source",
    "page",
    "page_size",
)


def parse_row_filter(query: Mapping[str, str]) -> RowFilter:
    """The explorer's filter from URL parameters; :class:`RowQueryError` names a bad one."""
    _known(query, _ROW_PARAMS)
    row_id = _int(query, "row_id", -1, 0, 2**31 - 1) if "row_id" in query else None
    return RowFilter(
        setting=_choice(query, "setting", _SETTINGS),
        method=_choice(query, "method", _METHODS),
        source=_choice(query, "source", tuple(SOURCES)),
        subject=_text(query, "subject"),
        preference=_text(query, "preference"),
        row_id=row_id,
        outcome=_choice(query, "outcome", OUTCOME_NAMES) or "all",
        page=_page(query),
    )


def parse_changed_filter(query: Mapping[str, str]) -> tuple[str, str, ChangedFilter]:
    """(reference, candidate, filter) of a changed-rows request."""
    _known(query, _CHANGED_PARAMS)
    reference, candidate = _text(query, "reference"), _text(query, "candidate")
    if reference is None or candidate is None:
        raise RowQueryError("give reference=RUN and candidate=RUN")
    source = _choice(query, "source", (*SOURCES, "full"))
    return (
        reference,
        candidate,
        ChangedFilter(
            metric=_choice(query, "metric", tuple(FAILURE_COLUMNS)) or "BR",
            direction=_choice(query, "direction", tuple(DISCORDANCE)) or "broke",
            setting=_choice(query, "setting", _SETTINGS),
            method=_choice(query, "method", _METHODS),
            source=None if source == "full" else source,
            page=_page(query),
        ),
    )


_CELL_WHERE = """
    run_id = $run_id
    AND ($setting IS NULL OR setting = $setting)
    AND ($method IS NULL OR method = $method)
    AND ($source IS NULL OR source = $source)
    AND ($subject IS NULL OR category = $subject)
    AND ($preference IS NULL OR contains(preference, $preference))
"""
_WHERE = _CELL_WHERE + "    AND ($row_id IS NULL OR row_id = $row_id)\n"

# A page is read in three steps over the kept narrow flags (perg_outcome_flags), not the
# join of results and baselines: the row id the page starts at (an OFFSET ordered by the
# integer row id alone, ~10x cheaper than by row id, setting and method), the matching
# outcomes before that row id, then the page from that row id on with the few outcomes of its
# first row id that belong to the page before skipped; the texts are joined for its keys only.
# The same rows as ORDER BY row_id, setting, method LIMIT OFFSET over the whole set.
_START_SQL = """
SELECT row_id FROM perg_outcome_flags WHERE {where} AND ({outcome})
ORDER BY row_id LIMIT 1 OFFSET $offset
"""
_BEFORE_SQL = """
SELECT count(*) FROM perg_outcome_flags WHERE {where} AND ({outcome}) AND row_id < $from_row
"""
_PAGE_SQL = """
WITH page AS (
    SELECT run_id, row_id, setting, method, base_correct, pref_correct, followed, robust,
        unresolved, fallback, failure
    FROM perg_outcome_flags
    WHERE {where} AND ({outcome}) AND row_id >= $from_row
    ORDER BY row_id, setting, method
    LIMIT $limit OFFSET $offset
)
SELECT p.row_id, p.setting, p.method, r.source, r.category AS subject, r.preference,
    r.gold_option, p.base_correct, p.pref_correct, p.followed, p.robust, p.unresolved,
    p.fallback AS parse_fallback, p.failure AS parse_failure,
    left(b.response, $max_chars) AS nopref_response, length(b.response) AS nopref_response_chars,
    b.answer AS nopref_answer, b.extraction AS nopref_extraction,
    b.tokens_in AS nopref_tokens_in, b.tokens_out AS nopref_tokens_out,
    b.latency_s AS nopref_latency_s, b.retries AS nopref_retries,
    left(r.response, $max_chars) AS response, length(r.response) AS response_chars,
    r.answer, r.extraction, r.judge_rating, r.judge_outcome,
    left(r.judge_raw, $max_chars) AS judge_raw, length(r.judge_raw) AS judge_raw_chars,
    r.finish_reason, r.tokens_in, r.tokens_out, r.latency_s, r.model_calls, r.retries
FROM page AS p
JOIN results AS r USING (run_id, row_id, setting, method)
JOIN baselines AS b USING (run_id, row_id)
ORDER BY p.row_id, p.setting, p.method
"""

_DEAD_WHERE = """
    run_id = $run_id
    AND ($setting IS NULL OR setting = $setting)
    AND ($method IS NULL OR method = $method)
    AND ($row_id IS NULL OR row_id = $row_id)
"""

_DEAD_SQL = """
SELECT row_id, setting, method, stage, service, topic, "partition", "offset",
    left(reason, $max_chars) AS reason, original_size, failed_at
FROM dead_letters WHERE {where}
ORDER BY row_id NULLS LAST, failed_at, "offset"
LIMIT $limit OFFSET $offset
"""

_CHANGED_SQL = """
WITH f AS (
    SELECT run_id, row_id, setting, method, source, coalesce(({failed}), false) AS failed,
        ({failed}) IS NULL AS undefined
    FROM perg_outcome_flags
    WHERE base_correct AND run_id IN ($reference, $candidate)
        AND ($setting IS NULL OR setting = $setting)
        AND ($method IS NULL OR method = $method)
        AND ($source IS NULL OR source = $source)
), pairs AS (
    SELECT a.row_id, a.setting, a.method, a.source
    FROM f AS a JOIN f AS b USING (row_id, setting, method)
    WHERE a.run_id = $reference AND b.run_id = $candidate
        AND NOT a.undefined AND NOT b.undefined AND {discordant}
)
SELECT p.*, count(*) OVER () AS total
FROM pairs AS p
ORDER BY p.setting, p.method, p.row_id
LIMIT $limit OFFSET $offset
"""

_CHANGED_DETAIL_SQL = """
SELECT run_id, row_id, setting, method, answer, judge_rating,
    left(response, $max_chars) AS response, length(response) AS response_chars
FROM results
WHERE run_id IN ($reference, $candidate) AND row_id = ANY($row_ids)
    AND setting = ANY($settings) AND method = ANY($methods)
"""


def records(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The rows of the cursor's last query, each as a dict by column name."""
    columns = [d[0] for d in con.description or ()]
    return [dict(zip(columns, row, strict=True)) for row in con.fetchall()]


def _run(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    con.execute(
        "SELECT run_id, dataset_path, dataset_sha256, n_rows FROM runs WHERE run_id = $run_id",
        {"run_id": run_id},
    )
    found = records(con)
    if not found:
        raise NotFound(f"unknown run {run_id[:80]!r}")
    return found[0]


class QuestionBook:
    """The question and options of a run's rows, from the dataset file the run was planned
    from (the results store keeps answers, not questions), loaded once per file and hash."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        self._loaded: dict[tuple[str, str], dict[int, Item] | str] = {}
        self._lock = threading.Lock()

    def items(self, path: str, sha256: str) -> dict[int, Item] | str:
        """Row id -> item, or why the questions cannot be shown."""
        with self._lock:
            if (path, sha256) not in self._loaded:
                self._loaded[(path, sha256)] = self._load(path, sha256)
            return self._loaded[(path, sha256)]

    def _load(self, path: str, sha256: str) -> dict[int, Item] | str:
        file = Path(path)
        if not file.is_absolute() and not file.exists():
            file = (self.data_dir or default_data_dir()) / file
        try:
            dataset = load_dataset(file, skip_invalid=True)
        except DatasetError as exc:
            return f"the questions are not shown: {str(exc).splitlines()[0]}"
        if dataset.sha256 != sha256:
            return f"the questions are not shown: {file} is not the file the run was planned from"
        return {item.row_id: item for item in dataset.items}


def explore_rows(
    con: duckdb.DuckDBPyConnection, run_id: str, f: RowFilter, questions: QuestionBook
) -> dict[str, Any]:
    """One page of the run's rows matching ``f``, with their texts and verdicts."""
    run = _run(con, run_id)
    params: dict[str, Any] = {
        "run_id": run_id,
        "setting": f.setting,
        "method": f.method,
        "row_id": f.row_id,
    }
    if f.outcome == DEAD_LETTERED:
        if f.source or f.subject or f.preference:
            raise RowQueryError(
                "dead-lettered messages can be filtered by setting, method and row_id only"
            )
        con.execute(f"SELECT count(*) FROM dead_letters WHERE {_DEAD_WHERE}", params)
        sql = _DEAD_SQL.format(where=_DEAD_WHERE)
    else:
        params |= {"source": f.source, "subject": f.subject, "preference": f.preference}
        if f.row_id is None:
            cell_params = {k: v for k, v in params.items() if k != "row_id"}
            count = CELL_COUNTS[f.outcome]
            con.execute(
                f"SELECT coalesce(sum({count}), 0) FROM perg_cells WHERE {_CELL_WHERE}", cell_params
            )
        else:
            where = _WHERE + f" AND ({OUTCOMES[f.outcome]})"
            con.execute(f"SELECT count(*) FROM perg_outcome_flags WHERE {where}", params)
        sql = _PAGE_SQL.format(where=_WHERE, outcome=OUTCOMES[f.outcome])
    total = int(con.fetchall()[0][0])
    if total == 0:
        raise NotFound(f"no rows of run {run_id[:80]!r} match {f.described()}")
    last = -(-total // f.page.size)
    if f.page.number > last:
        raise NotFound(f"page {f.page.number} is past the last page ({last}) of {total} rows")
    params |= {"limit": f.page.size, "offset": f.page.offset, "max_chars": MAX_TEXT_CHARS}
    if f.outcome != DEAD_LETTERED:
        params |= _seek(con, OUTCOMES[f.outcome], params)
    con.execute(sql, params)
    rows = records(con)
    if f.outcome != DEAD_LETTERED:
        _add_questions(rows, questions.items(run["dataset_path"], run["dataset_sha256"]))
    return {
        "run_id": run_id,
        "filter": f.described(),
        "total": total,
        "page": f.page.number,
        "page_size": f.page.size,
        "pages": last,
        "max_text_chars": MAX_TEXT_CHARS,
        "kind": "dead_letters" if f.outcome == DEAD_LETTERED else "results",
        "rows": rows,
    }


def _seek(con: duckdb.DuckDBPyConnection, outcome: str, params: dict[str, Any]) -> dict[str, int]:
    """The row id a page of outcomes starts at, and its offset from that row id's first
    matching outcome (see _PAGE_SQL)."""
    if params["offset"] == 0:
        return {"from_row": 0, "offset": 0}
    seek = {k: v for k, v in params.items() if k not in ("limit", "max_chars")}
    con.execute(_START_SQL.format(where=_WHERE, outcome=outcome), seek)
    found = con.fetchall()
    if not found:  # fewer outcomes than the kept cells counted: the page is empty
        return {"from_row": 2**31 - 1, "offset": 0}
    seek = {k: v for k, v in seek.items() if k != "offset"} | {"from_row": found[0][0]}
    con.execute(_BEFORE_SQL.format(where=_WHERE, outcome=outcome), seek)
    return {"from_row": found[0][0], "offset": params["offset"] - int(con.fetchall()[0][0])}


def _add_questions(rows: list[dict[str, Any]], items: dict[int, Item] | str) -> None:
    for row in rows:
        item = items.get(row["row_id"]) if isinstance(items, dict) else None
        row["question"] = item.question if item else None
        row["options"] = list(item.options) if item else None
        row["question_note"] = (
            items
            if isinstance(items, str)
            else (None if item else "this row is not in the run's dataset file")
        )
        # Pref-Aligner's stage 2 rewrites the baseline answer; self-critic's rewrites its own
        # first answer (not stored: only its rewrite is).
        row["stage2"] = (
            {"kind": "aligner", "input": row["nopref_response"], "output": row["response"]}
            if row["method"] == "pref_aligner"
            else {"kind": "critique", "input": None, "output": row["response"]}
            if row["method"] == "self_critic"
            else None
        )


def changed_rows(
    con: duckdb.DuckDBPyConnection, reference: str, candidate: str, f: ChangedFilter
) -> dict[str, Any]:
    """One page of the discordant Q* rows of ``f.metric``: rows that broke only in the
    candidate (``broke``) or only in the reference (``repaired`` in the candidate)."""
    for run_id in (reference, candidate):
        _run(con, run_id)
    sql = _CHANGED_SQL.format(failed=FAILURE_COLUMNS[f.metric], discordant=DISCORDANCE[f.direction])
    params: dict[str, Any] = {
        "reference": reference,
        "candidate": candidate,
        "setting": f.setting,
        "method": f.method,
        "source": f.source,
        "limit": f.page.size,
        "offset": f.page.offset,
    }
    con.execute(sql, params)
    pairs = records(con)
    total = int(pairs[0]["total"]) if pairs else 0
    described = (
        f"{f.metric} {f.direction} in {candidate[:80]!r} against {reference[:80]!r}"
        f" (setting={f.setting or 'any'}, method={f.method or 'any'},"
        f" source={f.source or 'full'})"
    )
    if not pairs:
        if f.page.number > 1:
            con.execute(sql, params | {"limit": 1, "offset": 0})
            if con.fetchall():
                raise NotFound(f"page {f.page.number} is past the last page of {described}")
        return {"filter": described, "total": 0, "page": 1, "pages": 0, "rows": []}
    con.execute(
        _CHANGED_DETAIL_SQL,
        {
            "reference": reference,
            "candidate": candidate,
            "max_chars": MAX_TEXT_CHARS,
            "row_ids": sorted({p["row_id"] for p in pairs}),
            "settings": sorted({p["setting"] for p in pairs}),
            "methods": sorted({p["method"] for p in pairs}),
        },
    )
    detail = {(d["run_id"], d["row_id"], d["setting"], d["method"]): d for d in records(con)}
    rows = []
    for p in pairs:
        key = (p["row_id"], p["setting"], p["method"])
        ref, cand = detail.get((reference, *key), {}), detail.get((candidate, *key), {})
        rows.append(
            {
                "row_id": p["row_id"],
                "setting": p["setting"],
                "method": p["method"],
                "source": p["source"],
                "reference": ref,
                "candidate": cand,
            }
        )
    return {
        "filter": described,
        "metric": f.metric,
        "direction": f.direction,
        "total": total,
        "page": f.page.number,
        "page_size": f.page.size,
        "pages": -(-total // f.page.size),
        "rows": rows,
    }


def facets(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """The values the explorer's filters can take for this run (from the kept cells)."""
    _run(con, run_id)
    out: dict[str, Any] = {"outcomes": list(OUTCOME_NAMES)}
    for name, column in (
        ("settings", "setting"),
        ("methods", "method"),
        ("sources", "source"),
        ("subjects", "category"),
    ):
        con.execute(
            f"SELECT DISTINCT {column} FROM perg_cells WHERE run_id = $run_id "
            f"AND {column} IS NOT NULL AND {column} <> '' ORDER BY 1",
            {"run_id": run_id},
        )
        out[name] = [r[0] for r in con.fetchall()]
    return out
