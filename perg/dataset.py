"""PERGData loading, validation, row selection and stratified sampling.

    dataset = load_dataset(Path("pergdata.csv"))           # every row validated
    rows = select_rows(dataset, "0-29,817")                 # or stratified_sample(dataset, 600, 1)

A file with bad rows raises :class:`DatasetError` (an :class:`~perg.errors.InputError`) listing
each problem as ``path:line: field: message``; ``skip_invalid=True`` loads the valid rows and
lists the others in ``Dataset.skipped``. Files are hostile input: fields are bounded in size,
control characters and duplicated columns or keys are refused, and option lists are parsed as
literals (never evaluated), with their nesting bounded before parsing.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import logging
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from perg._text import bracket_depth
from perg.config import default_data_dir
from perg.errors import InputError
from schemas.values import LETTERS, Item

__all__ = [
    "COLUMNS",
    "DATASET_FILE",
    "LETTERS",
    "MAX_FIELD_CHARS",
    "MAX_NESTING",
    "SOURCES",
    "Dataset",
    "DatasetError",
    "Item",
    "RowProblem",
    "load_dataset",
    "select_rows",
    "stratified_sample",
]

SOURCES = ("truthfulqa/truthful_qa", "tau/commonsense_qa", "cais/mmlu")
COLUMNS = ("question", "options", "gold_option", "gold_answer", "category", "source", "preference")
MAX_REPORTED = 20
DATASET_FILE = "pergdata.csv"
# Hostile-input bounds: a field longer than this (the csv module's own field limit) or an
# options literal nested deeper than this is rejected before it is parsed. PERGData's longest
# field has under 5,000 characters and its options nest at most 4 brackets deep (in option text).
MAX_FIELD_CHARS = 131_072
MAX_NESTING = 32
# C0 control characters other than tab, line feed and carriage return (NUL among them), and
# unpaired UTF-16 surrogates (valid JSON escapes that no UTF-8 encoder accepts).
_NUMBER = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() also accepts "²"
_UNACCEPTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowProblem:
    """One problem found in an input file: ``path:line: field: message`` (line 0: the file)."""

    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


class DatasetError(InputError):
    """The dataset cannot be loaded; ``problems`` lists every problem found.

    The message is the problem itself when there is one, else a count and the first
    ``MAX_REPORTED`` problems, one per line.
    """

    def __init__(self, problems: list[RowProblem]) -> None:
        self.problems = problems
        if len(problems) == 1:
            super().__init__(str(problems[0]))
            return
        lines = [str(p) for p in problems[:MAX_REPORTED]]
        if len(problems) > MAX_REPORTED:
            lines.append(f"... and {len(problems) - MAX_REPORTED} more")
        super().__init__(f"{len(problems)} problems in the dataset:\n" + "\n".join(lines))


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: its valid rows in file order, ``sha256`` of the file's bytes, the
    invalid rows skipped (with ``skip_invalid``) and the warnings (gold answer mismatches)."""

    path: Path
    items: tuple[Item, ...]
    sha256: str
    skipped: tuple[RowProblem, ...]
    warnings: tuple[RowProblem, ...] = ()


def load_dataset(path: Path | None = None, *, skip_invalid: bool = False) -> Dataset:
    """Load a PERGData CSV or JSONL file (default: ``pergdata.csv`` in the data dir).

    Every row is validated; by default any invalid row fails the whole load. With
    ``skip_invalid`` the valid rows load and the invalid ones are listed in ``skipped``.
    """
    path = path if path is not None else default_data_dir() / DATASET_FILE
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError([RowProblem(name, 0, "file", f"cannot read: {exc.strerror}")]) from exc
    text = _decode(raw, name)
    if not text.strip():
        raise DatasetError([RowProblem(name, 1, "file", "file is empty")])
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    records = _jsonl_records(text, name) if jsonl else _csv_records(text, name)
    items: list[Item] = []
    problems: list[RowProblem] = []
    warnings: list[RowProblem] = []
    row_id = -1
    for row_id, (line, record) in enumerate(records):
        row_problems, row_warnings, item = _validate(row_id, record, name, line, jsonl)
        problems.extend(row_problems)
        warnings.extend(row_warnings)
        if item is not None:
            items.append(item)
    if row_id < 0:
        where = "no rows after the header" if not jsonl else "no records"
        raise DatasetError([RowProblem(name, 2 if not jsonl else 1, "file", where)])
    for warning in warnings:
        log.warning("%s", warning)
    if problems and not skip_invalid:
        raise DatasetError(problems)
    if not items:
        raise DatasetError([*problems, RowProblem(name, 0, "file", "no valid rows")])
    return Dataset(
        path=path,
        items=tuple(items),
        sha256=hashlib.sha256(raw).hexdigest(),
        skipped=tuple(problems),
        warnings=tuple(warnings),
    )


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        bad = raw[exc.start : exc.start + 1].hex()
        message = f"not valid UTF-8 (byte 0x{bad} at offset {exc.start})"
        raise DatasetError([RowProblem(name, line, "encoding", message)]) from exc


def _csv_records(text: str, name: str) -> Iterator[tuple[int, Mapping[str, object]]]:
    # strict: a stray or unterminated quote is an error, not a field that swallows the next rows
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise DatasetError([RowProblem(name, 1, "csv", str(exc))]) from exc
    problems = [RowProblem(name, 1, c, "missing column") for c in COLUMNS if c not in header]
    for column in dict.fromkeys(header):
        positions = [i + 1 for i, c in enumerate(header) if c == column]
        if len(positions) > 1:
            where = ", ".join(map(str, positions))
            problems.append(RowProblem(name, 1, column, f"duplicated column (columns {where})"))
    if problems:
        raise DatasetError(problems)
    start = reader.line_num + 1
    try:
        for fields in reader:
            if fields:
                record: dict[str, object] = dict(zip(header, fields, strict=False))
                if len(fields) != len(header):
                    record["__fields__"] = f"expected {len(header)} fields, found {len(fields)}"
                yield start, record
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DatasetError([RowProblem(name, start, "csv", str(exc))]) from exc


def _jsonl_records(text: str, name: str) -> Iterator[tuple[int, Mapping[str, object]]]:
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            record = json.loads(content, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as exc:
            raise DatasetError([RowProblem(name, line, "json", exc.msg)]) from exc
        except ValueError as exc:  # e.g. an integer over Python's 4,300-digit conversion limit
            raise DatasetError([RowProblem(name, line, "json", str(exc))]) from None
        except _DuplicateKey as exc:
            problem = RowProblem(name, line, exc.key, "duplicated key in the JSON object")
            raise DatasetError([problem]) from None
        except RecursionError:
            problem = RowProblem(name, line, "json", "nested too deeply")
            raise DatasetError([problem]) from None
        if not isinstance(record, dict):
            raise DatasetError([RowProblem(name, line, "json", "not a JSON object")])
        yield line, record


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    record: dict[str, object] = {}
    for key, value in pairs:
        if key in record:
            raise _DuplicateKey(key)
        record[key] = value
    return record


def _parse_options(value: object) -> tuple[str, ...]:
    """Options from a Python list literal, a JSON array (text) or a list; ValueError if bad.

    The text is never evaluated, only parsed as a literal, and text over ``MAX_FIELD_CHARS``
    characters or nested over ``MAX_NESTING`` brackets deep is refused before parsing.
    """
    parsed = value
    if isinstance(value, str):
        if len(value) > MAX_FIELD_CHARS:
            raise ValueError(f"{len(value)} characters, over the limit of {MAX_FIELD_CHARS}")
        if bracket_depth(value) > MAX_NESTING:
            raise ValueError(f"brackets nested over {MAX_NESTING} deep: " + _clip(value))
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            try:
                parsed = json.loads(value)
            except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
                raise ValueError(
                    "not a Python list literal or JSON array: " + _clip(value)
                ) from None
    if not isinstance(parsed, list | tuple):
        raise ValueError(f"expected a list, got {type(parsed).__name__}")
    if not all(isinstance(o, str) for o in parsed):
        raise ValueError("every option must be a string")
    return tuple(parsed)


def _field_problem(value: str) -> str | None:
    """Why a text field is unacceptable (too long, a control character...), or None."""
    if len(value) > MAX_FIELD_CHARS:
        return f"{len(value)} characters, over the limit of {MAX_FIELD_CHARS}"
    found = _UNACCEPTABLE.search(value)
    if found is None:
        return None
    code = ord(found.group())
    if code == 0:
        kind = "a NUL byte"
    elif 0xD800 <= code <= 0xDFFF:
        kind = f"an unpaired surrogate U+{code:04X}"
    else:
        kind = f"control character U+{code:04X}"
    return f"contains {kind} at offset {found.start()}"


def _clip(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[:width] + "...")


def _validate(
    row_id: int, record: Mapping[str, object], name: str, line: int, jsonl: bool
) -> tuple[list[RowProblem], list[RowProblem], Item | None]:
    problems: list[RowProblem] = []

    def bad(field: str, message: str) -> None:
        problems.append(RowProblem(name, line, field, message))

    if "__fields__" in record:
        bad("row", str(record["__fields__"]))
    values: dict[str, str] = {}
    for column in COLUMNS:
        value = record.get(column)
        if column == "options":
            continue
        if value is None and jsonl and column == "category":
            value = ""
        if not isinstance(value, str):
            bad(column, "missing value" if value is None else "must be a string")
            value = ""
        elif (problem := _field_problem(value)) is not None:
            bad(column, problem)
            value = ""
        values[column] = value
    options: tuple[str, ...] = ()
    try:
        options = _parse_options(record.get("options"))
    except ValueError as exc:
        bad("options", str(exc))
    else:
        if not 2 <= len(options) <= len(LETTERS):
            bad("options", f"need 2 to {len(LETTERS)} options, found {len(options)}")
        for letter, option in zip(LETTERS, options, strict=False):
            if (problem := _field_problem(option)) is not None:
                bad("options", f"option {letter} {problem}")
    flagged = {problem.field for problem in problems}  # each field is reported once
    if not values["question"].strip() and "question" not in flagged:
        bad("question", "empty question")
    if not values["preference"].strip() and "preference" not in flagged:
        bad("preference", "empty preference")
    if values["source"] not in SOURCES and "source" not in flagged:
        bad("source", f"unknown source {values['source']!r} (known: {', '.join(SOURCES)})")
    gold = values["gold_option"]
    index = LETTERS.find(gold) if len(gold) == 1 else -1
    if index < 0 and "gold_option" not in flagged:
        bad("gold_option", f"{gold!r} is not an option letter A-Z")
    elif options and index >= len(options):
        bad("gold_option", f"{gold!r} is out of range for {len(options)} options")
    warnings: list[RowProblem] = []
    if not problems and options[index] != values["gold_answer"]:
        message = f"gold_answer differs from option {gold}: {_clip(values['gold_answer'])}"
        warnings.append(RowProblem(name, line, "gold_answer", message))
    if problems:
        return problems, warnings, None
    item = Item(
        row_id=row_id,
        question=values["question"],
        options=options,
        gold_option=gold,
        gold_answer=values["gold_answer"],
        category=values["category"],
        source=values["source"],
        preference=values["preference"],
    )
    return problems, warnings, item


def select_rows(dataset: Dataset, spec: str) -> list[Item]:
    """Rows by spec: ``"30"`` = the first 30 rows; ``"0-29,817-846,2038-2038"`` = ids and ranges.

    A spec with a comma or a dash names row ids (a single id: ``"2038,"`` or ``"2038-2038"``).
    The result is sorted by row id, without duplicates. A limit beyond the dataset's size or an
    id beyond its last row is an :class:`~perg.errors.InputError` (checked before any range is
    expanded, so a huge range costs nothing).
    """
    spec = spec.strip()
    size = len(dataset.items)
    if _NUMBER.fullmatch(spec):
        limit = int(spec)
        if limit < 1:
            raise InputError(f"row limit must be at least 1, got {spec!r}")
        if limit > size:
            raise InputError(
                f"row limit {limit} is more than the {size} rows of {dataset.path}"
                " (omit the limit to take every row)"
            )
        return list(dataset.items[:limit])
    last = dataset.items[-1].row_id
    ranges: list[tuple[int, int]] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        low_text, dash, high_text = part.partition("-")
        low_text, high_text = low_text.strip(), high_text.strip()
        if not _NUMBER.fullmatch(low_text) or (dash and not _NUMBER.fullmatch(high_text)):
            raise InputError(f"bad row spec {part!r}: use N, N-M, or a comma-separated list")
        low = int(low_text)
        high = int(high_text) if dash else low
        if high < low:
            raise InputError(f"bad row range {part!r}: end before start")
        if high > last:
            raise InputError(f"row id {high} out of range 0-{last} ({dataset.path})")
        ranges.append((low, high))
    if not ranges:
        raise InputError(f"empty row spec {spec!r}")
    by_id = {item.row_id: item for item in dataset.items}
    chosen: list[Item] = []
    next_id = 0  # ranges are merged: each id is looked at once, however often it is named
    for low, high in sorted(ranges):
        for row_id in range(max(low, next_id), high + 1):
            item = by_id.get(row_id)
            if item is None:
                raise InputError(f"row id {row_id} was skipped as invalid ({dataset.path})")
            chosen.append(item)
        next_id = max(next_id, high + 1)
    return chosen


def stratified_sample(dataset: Dataset, n: int, seed: int) -> list[Item]:
    """``n`` rows drawn proportionally by source (largest remainder), sorted by row id."""
    total = len(dataset.items)
    if not 1 <= n <= total:
        raise InputError(f"sample size must be 1..{total}, got {n}")
    groups: dict[str, list[Item]] = {}
    for item in dataset.items:
        groups.setdefault(item.source, []).append(item)
    order = sorted(groups, key=lambda s: (SOURCES.index(s), s))
    quotas = {s: n * len(groups[s]) // total for s in order}
    remainders = sorted(order, key=lambda s: (-(n * len(groups[s]) % total), order.index(s)))
    for source in remainders[: n - sum(quotas.values())]:
        quotas[source] += 1
    rng = random.Random(seed)
    chosen = [item for s in order for item in rng.sample(groups[s], quotas[s])]
    return sorted(chosen, key=lambda item: item.row_id)
