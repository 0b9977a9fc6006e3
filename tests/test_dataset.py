"""Dataset loading, validation, row selection and sampling."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from perg.config import default_data_dir
from perg.dataset import (
    COLUMNS,
    MAX_FIELD_CHARS,
    MAX_REPORTED,
    SOURCES,
    Dataset,
    DatasetError,
    load_dataset,
    select_rows,
    stratified_sample,
)
from perg.errors import InputError

SHARED_CSV = default_data_dir() / "pergdata.csv"
HOSTILE = Path(__file__).parent / "fixtures" / "hostile"
HOSTILE_CASES: dict[str, list[object]] = json.loads((HOSTILE / "expected.json").read_text())
needs_shared = pytest.mark.skipif(not SHARED_CSV.is_file(), reason="shared PERG data not found")

GOOD = {
    "question": "Which is a fruit?",
    "options": "['apple', 'stone', 'chair']",
    "gold_option": "A",
    "gold_answer": "apple",
    "category": "",
    "source": "tau/commonsense_qa",
    "preference": "I prefer concise answers.",
}


def write_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def load_error(path: Path) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    return info.value


@needs_shared
def test_loads_the_full_shared_dataset() -> None:
    dataset = load_dataset()
    assert len(dataset.items) == 7208
    assert Counter(item.source for item in dataset.items) == {
        "truthfulqa/truthful_qa": 817,
        "tau/commonsense_qa": 1221,
        "cais/mmlu": 5170,
    }
    assert [item.row_id for item in dataset.items] == list(range(7208))
    assert len(dataset.sha256) == 64
    assert dataset.skipped == ()
    assert dataset.warnings == ()
    first = dataset.items[0]
    assert first.letters == ("A", "B", "C", "D")
    assert first.gold_answer == first.options[first.letters.index(first.gold_option)]
    assert dataset.items[2038].source == "cais/mmlu"


def test_csv_row_fields_and_hash(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [GOOD, {**GOOD, "options": '["x", "y"]'}])
    dataset = load_dataset(path)
    assert dataset.items[0].options == ("apple", "stone", "chair")
    assert dataset.items[1].options == ("x", "y")  # JSON array accepted
    assert dataset.items[1].letters == ("A", "B")
    assert dataset.sha256 == load_dataset(path).sha256
    write_csv(path, [GOOD])
    assert load_dataset(path).sha256 != dataset.sha256


def test_jsonl_with_list_or_string_options(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{**GOOD, "options": ["apple", "stone"]}, GOOD]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    dataset = load_dataset(path)
    assert [item.options for item in dataset.items] == [
        ("apple", "stone"),
        ("apple", "stone", "chair"),
    ]


def test_bad_literal(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [GOOD, {**GOOD, "options": "['apple', 'stone'"}])
    error = load_error(path)
    assert [(p.line, p.field) for p in error.problems] == [(3, "options")]
    assert f"{path}:3: options: not a Python list literal or JSON array" in str(error)


def test_literal_is_never_evaluated(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [{**GOOD, "options": "__import__('os').getcwd()"}])
    assert load_error(path).problems[0].field == "options"


def test_gold_letter_out_of_range(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [{**GOOD, "gold_option": "D"}])
    error = load_error(path)
    assert f"{path}:2: gold_option: 'D' is out of range for 3 options" in str(error)


def test_missing_column(tmp_path: Path) -> None:
    columns = tuple(c for c in COLUMNS if c != "preference")
    path = write_csv(tmp_path / "d.csv", [GOOD], columns)
    assert f"{path}:1: preference: missing column" in str(load_error(path))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"")
    assert f"{path}:1: file: file is empty" in str(load_error(path))


def test_non_utf8(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [GOOD, GOOD])
    path.write_bytes(path.read_bytes().replace(b"stone", b"st\xf6ne", 2))
    message = str(load_error(path))
    assert f"{path}:2: encoding: not valid UTF-8 (byte 0xf6" in message


def test_missing_file(tmp_path: Path) -> None:
    assert "file: cannot read" in str(load_error(tmp_path / "absent.csv"))


def test_every_invalid_field_is_reported(tmp_path: Path) -> None:
    bad = {
        **GOOD,
        "question": " ",
        "source": "squad",
        "preference": "",
        "options": "['only one']",
        "gold_option": "a",
    }
    path = write_csv(tmp_path / "d.csv", [GOOD, bad])
    fields = {p.field for p in load_error(path).problems}
    assert fields == {"question", "source", "preference", "options", "gold_option"}


def test_error_lists_rows_up_to_a_cap(tmp_path: Path) -> None:
    rows = [{**GOOD, "source": "nope"} for _ in range(MAX_REPORTED + 5)]
    error = load_error(write_csv(tmp_path / "d.csv", rows))
    assert len(error.problems) == MAX_REPORTED + 5
    assert str(error).endswith("... and 5 more")


def test_line_numbers_follow_multiline_fields(tmp_path: Path) -> None:
    rows = [{**GOOD, "question": "line one\nline two\nline three"}, {**GOOD, "gold_option": "Z"}]
    error = load_error(write_csv(tmp_path / "d.csv", rows))
    assert error.problems[0].line == 5


def test_skip_invalid_loads_the_rest(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [GOOD, {**GOOD, "gold_option": "Q"}, GOOD])
    dataset = load_dataset(path, skip_invalid=True)
    assert [item.row_id for item in dataset.items] == [0, 2]
    assert [(p.line, p.field) for p in dataset.skipped] == [(3, "gold_option")]
    with pytest.raises(ValueError, match="row id 1 was skipped"):
        select_rows(dataset, "0-2")


def test_skip_invalid_with_no_valid_row_fails(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [{**GOOD, "source": "x"}])
    with pytest.raises(DatasetError, match="no valid rows"):
        load_dataset(path, skip_invalid=True)


def test_gold_answer_mismatch_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_csv(tmp_path / "d.csv", [{**GOOD, "gold_answer": "pear"}])
    with caplog.at_level(logging.WARNING):
        dataset = load_dataset(path)
    assert len(dataset.items) == 1
    assert [w.field for w in dataset.warnings] == ["gold_answer"]
    assert "gold_answer differs from option A" in caplog.text


def test_short_row(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(",".join(COLUMNS) + "\nonly,two\n", encoding="utf-8")
    problems = load_error(path).problems
    assert problems[0].field == "row"
    assert "expected 7 fields, found 2" in problems[0].message


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    rows = [{**GOOD, "source": source} for source in SOURCES for _ in range(10)]
    return load_dataset(write_csv(tmp_path_factory.mktemp("d") / "d.csv", rows))


def test_select_limit_and_ranges(small: Dataset) -> None:
    assert [i.row_id for i in select_rows(small, "3")] == [0, 1, 2]
    assert len(select_rows(small, "30")) == 30
    ids = [i.row_id for i in select_rows(small, "10-12, 0-1,25,11")]
    assert ids == [0, 1, 10, 11, 12, 25]
    assert [i.row_id for i in select_rows(small, "7,")] == [7]
    assert [i.row_id for i in select_rows(small, "7-7")] == [7]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0", "at least 1"),
        ("a-b", "bad row spec"),
        ("3-1", "end before start"),
        ("1-2-3", "bad row spec"),
        (",", "empty row spec"),
        ("0-30", "row id 30 out of range 0-29"),
        ("31", "row limit 31 is more than the 30 rows of "),
        ("99999", "row limit 99999 is more than the 30 rows of "),
        ("0-99999999999", "row id 99999999999 out of range 0-29"),
        ("5,0-99999999999999999999999999", "row id 99999999999999999999999999 out of range"),
        ("²", "bad row spec '²'"),
        ("1-²", "bad row spec '1-²'"),
        ("٣", "bad row spec '٣'"),
    ],
)
def test_select_bad_specs(small: Dataset, spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        select_rows(small, spec)


def test_select_merges_repeated_ranges(small: Dataset) -> None:
    """A spec naming the same rows 100,000 times is merged, not expanded 100,000 times."""
    ids = [i.row_id for i in select_rows(small, ",".join(["0-29"] * 100_000 + ["3-5,28"]))]
    assert ids == list(range(30))


@pytest.mark.parametrize("name", sorted(HOSTILE_CASES))
def test_hostile_corpus(name: str) -> None:
    line, field, fragment = HOSTILE_CASES[name]
    error = load_error(HOSTILE / name)
    assert any(
        (p.path, p.line, p.field) == (str(HOSTILE / name), line, field)
        and str(fragment) in p.message
        for p in error.problems
    ), error.problems
    assert isinstance(error, InputError) and isinstance(error, ValueError)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_oversized_fields(tmp_path: Path, suffix: str) -> None:
    big = "x" * (MAX_FIELD_CHARS + 1)
    path = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        write_csv(path, [GOOD, {**GOOD, "question": big}])
        expected = (3, "csv", "field larger than field limit")
    else:
        lines = [json.dumps(GOOD), json.dumps({**GOOD, "preference": big})]
        path.write_text("\n".join(lines), encoding="utf-8")
        expected = (2, "preference", f"{len(big)} characters, over the limit of {MAX_FIELD_CHARS}")
    (problem,) = load_error(path).problems
    assert (problem.line, problem.field) == expected[:2] and expected[2] in problem.message


def test_oversized_options_literal(tmp_path: Path) -> None:
    """A JSONL line has no csv field limit: the options text is measured before it is parsed."""
    options = repr(["y" * 1000] * 200)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({**GOOD, "options": options}), encoding="utf-8")
    (problem,) = load_error(path).problems
    assert (problem.line, problem.field) == (1, "options")
    assert f"over the limit of {MAX_FIELD_CHARS}" in problem.message


def test_one_problem_is_one_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [{**GOOD, "gold_option": "1"}])
    assert str(load_error(path)) == f"{path}:2: gold_option: '1' is not an option letter A-Z"


@needs_shared
def test_stratified_sample_is_proportional_and_deterministic() -> None:
    dataset = load_dataset()
    sample = stratified_sample(dataset, 100, seed=7)
    assert Counter(i.source for i in sample) == {
        "truthfulqa/truthful_qa": 11,
        "tau/commonsense_qa": 17,
        "cais/mmlu": 72,
    }
    ids = [i.row_id for i in sample]
    assert ids == sorted(set(ids))
    assert ids == [i.row_id for i in stratified_sample(dataset, 100, seed=7)]
    assert ids != [i.row_id for i in stratified_sample(dataset, 100, seed=8)]


def test_stratified_sample_bounds(small: Dataset) -> None:
    assert len(stratified_sample(small, 30, seed=1)) == 30
    assert Counter(i.source for i in stratified_sample(small, 4, seed=1)) == {
        SOURCES[0]: 2,
        SOURCES[1]: 1,
        SOURCES[2]: 1,
    }
    for n in (0, 31):
        with pytest.raises(ValueError, match="sample size"):
            stratified_sample(small, n, seed=1)
