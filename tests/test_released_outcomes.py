"""`perg score` on results in the authors' released style (issue 19): any answer value is scored,
gold is per (run, setting, method, row), and every metric equals an independent count.

tests/fixtures/released/outcomes_released.csv has two runs (models) x three settings x three
methods x 12 rows, written like the authors' per-row files: `-1` where no option was found,
free text ('None', 'A or B', ' C', 'b', '(D)', ...), empty answers (a refused call), and
TruthfulQA gold letters that differ between the settings and methods of one run (the authors
shuffled its options per run). The reference below counts with the csv module and the
formulas of the authors' results_helper.py, independently of perg/metrics.sql.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest

from perg.cli import main
from perg.cli.score import JSON_KEYS
from perg.metrics import answer_values, compute_metrics, load_outcomes_file

RELEASED = Path(__file__).parent / "fixtures" / "released" / "outcomes_released.csv"
Cell = tuple[str, str, str, str]  # run, setting, method, source ('full' pools them)


def records(path: Path = RELEASED) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [{"run_id": "offline"} | row for row in csv.DictReader(fh)]


def percent(part: int, whole: int) -> float | None:
    return 100 * part / whole if whole else None


def reference(rows: list[dict[str, str]]) -> dict[Cell, dict[str, float | int | None]]:
    """Every metric of every cell, counted row by row (threshold 3, as the paper)."""
    cells: dict[Cell, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        for source in (row["source"], "full"):
            cells[row["run_id"], row["setting"], row["method"], source].append(row)
    out: dict[Cell, dict[str, float | int | None]] = {}
    for cell, members in cells.items():
        n = len(members)
        qstar = [r for r in members if r["nopref_answer"] == r["gold_option"]]
        correct = [r for r in qstar if r["pref_answer"] == r["gold_option"]]
        followed = [r for r in qstar if r["judge_rating"] and int(r["judge_rating"]) >= 3]
        robust = [r for r in correct if cell[1] == "irrelevant" or r in followed]
        union = [r for r in members if r["gold_option"] in (r["nopref_answer"], r["pref_answer"])]
        both = [r for r in members if r["nopref_answer"] == r["pref_answer"] == r["gold_option"]]
        nopref_invalid = sum(r["nopref_answer"] == "-1" for r in members)
        pref_invalid = sum(r["pref_answer"] == "-1" for r in members)
        no_pref, pref = percent(nopref_invalid, n), percent(pref_invalid, n)
        assert no_pref is not None and pref is not None
        out[cell] = {
            "n_rows": n,
            "n_qstar": len(qstar),
            "BR": None if not qstar else 100 - percent(len(correct), len(qstar)),  # type: ignore[operator]
            "AFR": None
            if not qstar or cell[1] == "irrelevant"
            else 100 - percent(len(followed), len(qstar)),  # type: ignore[operator]
            "RER": None if not qstar else 100 - percent(len(robust), len(qstar)),  # type: ignore[operator]
            "PVR": 0.0 if not union else 100 - percent(len(both), len(union)),  # type: ignore[operator]
            "NoPrefInvalid": no_pref,
            "PrefInvalid": pref,
            "MCValidDrop": (100 - pref) - (100 - no_pref),
            "PDDF": None if not nopref_invalid else (pref - no_pref) / no_pref * 100,
        }
    for (run, setting, method, source), values in out.items():
        zero = out.get((run, setting, "zero_shot", source), {}).get("RER")
        rer = values["RER"]
        values["RER_relative_reduction"] = (
            100
            * (zero - rer)  # type: ignore[operator]
            / zero
            if method == "pref_aligner" and zero and rer is not None
            else None
        )
    return out


def scored(path: Path = RELEASED) -> tuple[duckdb.DuckDBPyConnection, list[dict[str, object]]]:
    con = duckdb.connect()
    load_outcomes_file(con, path, followed_threshold=lambda: 3)
    return con, compute_metrics(con)


def test_fixture_is_in_the_released_style() -> None:
    rows = records()
    answers = [r[c] for r in rows for c in ("nopref_answer", "pref_answer")]
    assert {"-1", "", "None", " C", "b"} <= set(answers)
    gold = defaultdict(set)
    for r in rows:
        gold[r["run_id"], r["row_id"]].add(r["gold_option"])
    shuffled = [key for key, letters in gold.items() if len(letters) > 1]
    assert shuffled and all(
        next(r["source"] for r in rows if (r["run_id"], r["row_id"]) == key)
        == "truthfulqa/truthful_qa"
        for key in shuffled
    )


def test_every_metric_equals_an_independent_count() -> None:
    expected = reference(records())
    _, rows = scored()
    got = {(r["run_id"], r["setting"], r["method"], r["source"]): r for r in rows}
    assert set(got) == set(expected)
    assert len(got) == 2 * 3 * 3 * 4
    names = list(next(iter(expected.values())))
    for cell, values in expected.items():
        for name in names:
            assert got[cell][name] == pytest.approx(values[name], abs=1e-9), (cell, name)
    # the fixture exercises each branch: some cells with invalid answers, PDDF both ways
    assert any(v["PDDF"] is None for v in expected.values())
    assert any(isinstance(v["PDDF"], float) and v["PDDF"] > 0 for v in expected.values())
    assert any(isinstance(v["PDDF"], float) and v["PDDF"] < 0 for v in expected.values())
    assert any(v["RER_relative_reduction"] is not None for v in expected.values())


def test_answer_values_are_counted_per_column() -> None:
    con, _ = scored()
    rows = records()
    letters = {chr(c) for c in range(ord("A"), ord("Z") + 1)}
    reported = {r["column"]: r for r in answer_values(con)}
    for column in ("nopref_answer", "pref_answer"):
        values = [r[column] for r in rows]
        others = [v for v in values if v and v not in letters]
        assert reported[column] == {
            "column": column,
            "n_values": len(values),
            "n_not_letter": len(others),
            "n_no_option": values.count("-1"),
            "n_empty": values.count(""),
            "example": others[0],
        }


def test_score_cli_json_has_the_missing_answer_metrics(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["score", str(RELEASED), "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [list(r) for r in rows] == [list(JSON_KEYS)] * len(rows)
    for name in ("NoPrefInvalid", "PrefInvalid", "MCValidDrop", "PDDF", "RER_relative_reduction"):
        assert name in JSON_KEYS
    warning, *notes = captured.err.splitlines()  # the authors' baselines differ per cell
    assert warning.startswith("perg score: nopref_answer: row 7 of run gemma-2-9b has ")
    assert notes[0].startswith("Answers, nopref_answer: ")
    assert "are -1, no option found; e.g. " in notes[0]
    assert notes[1].startswith("Answers, pref_answer: ")


def test_score_cli_table_lists_the_missing_answer_metrics(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["score", str(RELEASED)]) == 0
    out = capsys.readouterr().out
    assert "NoPrefInvalid  PrefInvalid  MCValidDrop  PDDF" in out
    assert "Answers, pref_answer: " in out


def test_unresolved_extraction_is_invalid_a_refusal_is_not(tmp_path: Path) -> None:
    """Our pipeline marks "no option found" as extraction 'unresolved' (answer empty); an
    empty answer without it (a refused call) is wrong but not invalid; a JSON -1 is the
    authors' -1; an answer is never trimmed: ' A' is not 'A'."""
    lines = [
        {"nopref_answer": None, "nopref_extraction": "unresolved", "pref_answer": "A"},
        {"nopref_answer": "A", "pref_answer": None, "pref_extraction": "unresolved"},
        {"nopref_answer": "A", "pref_answer": None},
        {"nopref_answer": -1, "pref_answer": " A"},
    ]
    path = tmp_path / "ours.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i, line in enumerate(lines):
            base = {"source": "cais/mmlu", "setting": "relevant", "method": "zero_shot"}
            fh.write(json.dumps(base | {"row_id": i, "gold_option": "A", "judge_rating": 4} | line))
            fh.write("\n")
    (row,) = [r for r in scored(path)[1] if r["source"] == "full"]
    assert (row["n_rows"], row["n_qstar"], row["n_correct"]) == (4, 2, 0)
    assert (row["NoPrefInvalid"], row["PrefInvalid"], row["MCValidDrop"]) == (50.0, 25.0, 25.0)
    assert row["PDDF"] == -50.0


def test_gold_may_differ_between_settings_but_not_twice_in_one(tmp_path: Path) -> None:
    text = RELEASED.read_text(encoding="utf-8").splitlines()
    path = tmp_path / "twice.csv"
    path.write_text("\n".join([*text, text[1]]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r":218: row_id: duplicate outcome for run llama-3.1-8b"):
        scored(path)


SLICE = RELEASED.parent / "llama31_8b_relevant_direct_slice.csv"


def test_a_verbatim_slice_of_a_released_file() -> None:
    """All 19 rows of the authors' results/mcq_results/relevant/direct/full/
    Llama-3.1-8B-Instruct_2.csv (commit 378ec2f), their answer letters as released (letters
    beyond the options, S, X, Y..., count as wrong), in our columns; the file has no ratings.
    By hand: Q* = rows 0, 5, 8, 10, 16; correct with preference among them: 5, 10 (BR 60);
    correct in either: 8 rows, in both: 2 (PVR 75)."""
    (tqa, full) = scored(SLICE)[1]
    assert (full["n_rows"], full["n_qstar"], full["n_correct"]) == (19, 5, 2)
    assert (full["BR"], full["PVR"], full["NoPrefInvalid"], full["PrefInvalid"]) == (
        60.0, 75.0, 0.0, 0.0,
    )  # fmt: skip
    expected = reference(records(SLICE))["offline", "relevant", "zero_shot", "full"]
    assert full["BR"] == expected["BR"] and full["PVR"] == expected["PVR"]
    assert tqa == full | {"source": "truthfulqa/truthful_qa"}
