"""The SQL metrics engine: a hand-computed fixture, input checks and properties."""

from __future__ import annotations

import dataclasses
import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from fixtures.live.runs import baseline_repeat, make_spec, verdicts
from hypothesis import given, settings
from hypothesis import strategies as st

from perg.errors import InputError
from perg.metrics import (
    OUTCOME_COLUMNS,
    OUTCOME_TYPES,
    compute_agreement,
    compute_metrics,
    create_metric_views,
    format_agreement,
    format_metrics_table,
    load_outcomes_file,
)
from schemas import Verdict
from services.sink.store import ResultStore, run_statuses

FIXTURE = Path(__file__).parent / "fixtures" / "core" / "outcomes_small.csv"
Z = 1.959964
TQA, MMLU = "truthfulqa/truthful_qa", "cais/mmlu"


def wilson(failures: int, n: int) -> tuple[float, float]:
    """Reference 95% Wilson interval of failures / n, in percent."""
    p = failures / n
    center = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return 100 * max(0.0, center - half), 100 * min(1.0, center + half)


def loaded(
    path: Path = FIXTURE, run_name: str | None = None, threshold: int = 3
) -> duckdb.DuckDBPyConnection:
    """``path`` loaded; rows without a followed_threshold get ``threshold``."""
    con = duckdb.connect()
    load_outcomes_file(con, path, run_name=run_name, followed_threshold=lambda: threshold)
    return con


def keyed(rows: list[dict[str, object]], key: str) -> dict[tuple[object, ...], dict[str, object]]:
    return {(r["setting"], r["method"], r[key]): r for r in rows}


def expect(row: dict[str, object], **values: object) -> None:
    for name, value in values.items():
        assert row[name] == value, name


def expect_intervals(row: dict[str, object], n: int, **failures: int) -> None:
    for metric, count in failures.items():
        low, high = wilson(count, n)
        assert row[f"{metric}_lo"] == pytest.approx(low, abs=1e-9), metric
        assert row[f"{metric}_hi"] == pytest.approx(high, abs=1e-9), metric


def test_hand_computed_by_source() -> None:
    rows = keyed(compute_metrics(loaded()), "source")
    assert list(rows) == [
        ("relevant", "zero_shot", TQA),
        ("relevant", "zero_shot", MMLU),
        ("relevant", "zero_shot", "full"),
        ("irrelevant", "zero_shot", TQA),
        ("irrelevant", "zero_shot", "full"),
        ("irrelevant", "cot", TQA),
        ("irrelevant", "cot", "full"),
    ]
    tqa = rows["relevant", "zero_shot", TQA]
    expect(tqa, run_id="offline", n_rows=4, n_qstar=3, n_correct=2, n_followed=2, n_robust=1)
    expect(tqa, BR=100 / 3, AFR=100 / 3, RER=200 / 3, PVR=50.0)
    expect(tqa, extraction_unresolved_rate=0.0, judge_unparseable_rate=0.0, truncation_rate=0.0)
    expect_intervals(tqa, 3, BR=1, AFR=1, RER=2)

    mmlu = rows["relevant", "zero_shot", MMLU]
    expect(mmlu, n_rows=4, n_qstar=3, n_correct=2, n_followed=2, n_robust=1)
    expect(mmlu, BR=100 / 3, AFR=100 / 3, RER=200 / 3, PVR=100 / 3)
    expect(mmlu, extraction_unresolved_rate=25.0, judge_unparseable_rate=25.0)
    expect(mmlu, parse_fallback_rate=25.0, parse_failure_rate=0.0, truncation_rate=25.0)

    full = rows["relevant", "zero_shot", "full"]
    expect(full, n_rows=8, n_qstar=6, n_correct=4, n_followed=4, n_robust=2)
    expect(full, BR=200 / 6, AFR=200 / 6, RER=400 / 6, PVR=300 / 7)
    expect(full, extraction_unresolved_rate=12.5, judge_unparseable_rate=12.5)
    expect_intervals(full, 6, BR=2, AFR=2, RER=4)


def test_hand_computed_irrelevant() -> None:
    rows = keyed(compute_metrics(loaded()), "source")
    irrelevant = rows["irrelevant", "zero_shot", TQA]
    expect(irrelevant, n_qstar=2, n_correct=1, n_followed=None, n_robust=None)
    expect(irrelevant, BR=50.0, AFR=None, AFR_lo=None, AFR_hi=None, RER=50.0, PVR=50.0)
    expect(irrelevant, RER_lo=irrelevant["BR_lo"], RER_hi=irrelevant["BR_hi"])
    expect(irrelevant, judge_unparseable_rate=None)
    empty = rows["irrelevant", "cot", "full"]
    expect(empty, n_qstar=0, BR=None, BR_lo=None, RER=None, PVR=0.0)


def test_hand_computed_by_preference_and_subject() -> None:
    con = loaded()
    prefs = keyed(compute_metrics(con, by="preference"), "preference")
    expect(prefs["relevant", "zero_shot", "P1"], n_qstar=3, BR=0.0, AFR=200 / 3, RER=200 / 3)
    expect(prefs["relevant", "zero_shot", "P1"], PVR=0.0)
    expect(prefs["relevant", "zero_shot", "P2"], n_qstar=3, BR=200 / 3, AFR=0.0, RER=200 / 3)
    expect(prefs["relevant", "zero_shot", "P2"], PVR=75.0)
    subjects = keyed(compute_metrics(con, by="subject"), "category")
    assert set(subjects) == {
        ("relevant", "zero_shot", "anatomy"),
        ("relevant", "zero_shot", "marketing"),
    }
    expect(subjects["relevant", "zero_shot", "anatomy"], BR=50.0, AFR=50.0, RER=100.0, PVR=50.0)
    expect(subjects["relevant", "zero_shot", "marketing"], BR=0.0, AFR=0.0, RER=0.0, PVR=0.0)


def test_views_have_the_documented_columns() -> None:
    con = loaded()
    create_metric_views(con)
    metric_columns = [
        "n_rows", "n_qstar", "n_correct", "n_followed", "n_robust",
        "BR", "BR_lo", "BR_hi", "AFR", "AFR_lo", "AFR_hi", "RER", "RER_lo", "RER_hi", "PVR",
        "n_noise_qstar", "noise_BR", "noise_BR_lo", "noise_BR_hi",
        "extraction_unresolved_rate", "judge_unparseable_rate", "parse_fallback_rate",
        "parse_failure_rate", "truncation_rate",
        "NoPrefInvalid", "PrefInvalid", "MCValidDrop", "PDDF", "RER_relative_reduction",
    ]  # fmt: skip
    for view, key in [
        ("metrics_by_source", "source"),
        ("metrics_by_preference", "preference"),
        ("metrics_by_subject", "category"),
    ]:
        columns = [d[0] for d in con.execute(f"SELECT * FROM {view} LIMIT 0").description]
        assert columns == ["run_id", "setting", "method", key, *metric_columns]


def test_outcomes_table_has_the_contract_columns() -> None:
    described = loaded().execute("DESCRIBE outcomes").fetchall()
    assert [(r[0], r[1]) for r in described] == list(OUTCOME_TYPES.items())
    assert tuple(r[0] for r in described) == OUTCOME_COLUMNS


def test_same_metrics_from_jsonl_and_parquet(tmp_path: Path) -> None:
    expected = compute_metrics(loaded())
    rows = loaded().execute("SELECT * FROM outcomes").fetchall()
    jsonl = tmp_path / "o.jsonl"
    with jsonl.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(dict(zip(OUTCOME_COLUMNS, row, strict=True))) + "\n")
    assert compute_metrics(loaded(jsonl)) == expected
    parquet = tmp_path / "o.parquet"
    loaded().execute(f"COPY outcomes TO '{parquet}' (FORMAT parquet)")
    assert compute_metrics(loaded(parquet)) == expected


def test_run_names_and_filter(tmp_path: Path) -> None:
    assert {r["run_id"] for r in compute_metrics(loaded(run_name="mine"))} == {"mine"}
    text = FIXTURE.read_text(encoding="utf-8").splitlines()
    two_runs = tmp_path / "runs.csv"
    lines = ["run_id," + text[0]] + [f"r1,{t}" for t in text[1:]] + [f"r2,{t}" for t in text[1:3]]
    two_runs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    con = loaded(two_runs)
    assert {r["run_id"] for r in compute_metrics(con)} == {"r1", "r2"}
    assert {r["n_rows"] for r in compute_metrics(con, "r2")} == {2}
    assert compute_metrics(con, "absent") == []


# (text replaced in the fixture, what the message says after "path:": "LINE: field: message")
BAD_EDITS = [
    (("judge_rating,", "rating,"), " missing required column(s): judge_rating"),
    ((",10,A,A,A,", ",x10,A,A,A,"), "6: row_id: 'x10' is not a whole number"),
    ((",,4,unresolved", ",,high,unresolved"), "7: judge_rating: 'high' is not a whole number"),
    ((",3,D,A,D,3,", ",3,D,A,D,3.7,"), "5: judge_rating: '3.7' is not a whole number"),
    ((",1,A,A,C,5,", ",1,A,A,C,99,"), "3: judge_rating: 99 is outside the scale 1..5"),
    ((",2,C,C,C,2,", ",2,C,C,C,0,"), "4: judge_rating: 0 is outside the scale 1..5"),
    (("P2,irrelevant,cot", "P2,sideways,cot"), "12: setting: unknown setting 'sideways'"),
    (("P2,relevant,zero_shot,1,", "P2,relevant,zero-shot,1,"), "3: method: unknown method"),
    (("cais/mmlu,anatomy,P1", "mmlu,anatomy,P1"), "6: source: unknown source 'mmlu'"),
    ((",12,C,D,D,", ",12,7,D,D,"), "8: gold_option: '7' is not an option letter [A-Z]"),
    ((",12,C,D,D,", ",12,CD,D,D,"), "8: gold_option: 'CD' is not an option letter"),
    ((",3,D,A,D,", ",-3,D,A,D,"), "5: row_id: -3 is negative"),
    ((",3,D,A,D,", ",99999999999,D,A,D,"), "5: row_id: '99999999999' is out of range"),
    ((",parsed,true,", ",guessed,true,"), "9: pref_extraction: unknown pref_extraction"),
    ((",false,stop\ncais", ",maybe,stop\ncais"), "5: parse_fallback: 'maybe' is not a valid"),
    (
        ("irrelevant,cot,3,D", "irrelevant,zero_shot,1,A"),
        "12: row_id: duplicate outcome for run offline, irrelevant/zero_shot, row 1"
        " (first on line 11)",
    ),
    (("zero_shot,12,C", "zero_shot,12,"), "8: gold_option: empty (a value is required)"),
    (
        ("relevant,zero_shot,", "relevant,,"),
        "2: method: empty (a value is required) (10 rows in all)",
    ),
]


@pytest.mark.parametrize(("edit", "message"), BAD_EDITS)
def test_bad_results_files(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    path = tmp_path / "bad.csv"
    text = FIXTURE.read_text(encoding="utf-8")
    assert edit[0] in text
    path.write_text(text.replace(*edit), encoding="utf-8")
    with pytest.raises(InputError) as info:
        loaded(path)
    assert str(info.value).startswith(f"{path}:{message}")


def test_bad_values_in_jsonl_and_parquet(tmp_path: Path) -> None:
    con = duckdb.connect()
    rows = con.read_csv(str(FIXTURE), header=True, all_varchar=True).fetchall()
    columns = FIXTURE.read_text(encoding="utf-8").splitlines()[0].split(",")
    records: list[dict[str, object]] = [dict(zip(columns, row, strict=True)) for row in rows]
    for record in records:
        rating = record["judge_rating"]
        record["judge_rating"] = float(rating) if isinstance(rating, str) else None
    records[2]["judge_rating"] = 3.7  # a JSON number: DuckDB would round it to 4
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text("\n" + "\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{jsonl}:4: judge_rating: 3.7 is not a whole number"):
        loaded(jsonl)
    records[2]["judge_rating"] = 9.0
    table = pa.Table.from_pylist(records)
    parquet = tmp_path / "bad.parquet"
    con.from_arrow(table).write_parquet(str(parquet))
    with pytest.raises(InputError, match=rf"^{parquet}: row 3: judge_rating: 9 is outside"):
        loaded(parquet)


def test_header_only_and_duplicated_columns(tmp_path: Path) -> None:
    header = FIXTURE.read_text(encoding="utf-8").splitlines()[0]
    only = tmp_path / "header.csv"
    only.write_text(header + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{only}:2: file: no outcome rows \(only a header\)"):
        loaded(only)
    twice = tmp_path / "twice.csv"
    twice.write_text(header + ",method\n", encoding="utf-8")
    with pytest.raises(
        InputError, match=rf"^{twice}:1: method: duplicated column \(columns 5, 14\)"
    ):
        loaded(twice)


def test_nothing_is_loaded_from_a_bad_file(tmp_path: Path) -> None:
    con = loaded()
    before = con.execute("SELECT count(*) FROM outcomes").fetchall()
    bad = tmp_path / "bad.csv"
    bad.write_text(FIXTURE.read_text(encoding="utf-8").replace(",1,A,A,C,5,", ",1,A,A,C,99,"))
    with pytest.raises(InputError):
        load_outcomes_file(con, bad)
    assert con.execute("SELECT count(*) FROM outcomes").fetchall() == before
    tables = {name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert tables == {"outcomes"}


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such results file"):
        loaded(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(ValueError, match="results file is empty"):
        loaded(tmp_path / "empty.csv")
    other = tmp_path / "o.txt"
    other.write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown results format"):
        loaded(other)


def test_format_metrics_table() -> None:
    table = format_metrics_table(compute_metrics(loaded()))
    lines = table.splitlines()
    assert lines[0].split()[:6] == ["run", "setting", "method", "source", "n", "|Q*|"]
    assert "33.3 [6.1, 79.2]" in lines[1] and lines[1].rstrip().endswith("50.0")
    assert len(lines) == 8
    assert format_metrics_table([]) == "(no outcomes)"


# --- properties -------------------------------------------------------------

Outcome = tuple[bool, str | None, int | None, str]
OUTCOME = st.tuples(
    st.booleans(),  # baseline correct
    st.sampled_from(["A", "B", None]),  # preference answer (gold is A)
    st.one_of(st.none(), st.integers(min_value=1, max_value=5)),  # judge rating
    st.sampled_from([TQA, MMLU]),
)


@cache
def property_connection() -> duckdb.DuckDBPyConnection:
    """One connection for all examples: each replaces TABLE outcomes under the same views."""
    con = duckdb.connect()
    columns = ", ".join(f"{name} {kind}" for name, kind in OUTCOME_TYPES.items())
    con.execute(f"CREATE TABLE outcomes ({columns})")
    create_metric_views(con)
    return con


def insert_outcomes(rows: list[tuple[str, Outcome]]) -> duckdb.DuckDBPyConnection:
    records = [
        ("run", i, source, "s", "p", setting, "zero_shot", "A", "A" if base else "B", pref, rating,
         None, None, None, False, False, None, 3, "rules", None, None, None, None)
        for i, (setting, (base, pref, rating, source)) in enumerate(rows)
    ]  # fmt: skip
    table = pa.Table.from_pylist([dict(zip(OUTCOME_COLUMNS, r, strict=True)) for r in records])
    con = property_connection()
    con.execute("DELETE FROM outcomes")
    if records:
        con.register("perg_new_outcomes", table)
        con.execute("INSERT INTO outcomes SELECT * FROM perg_new_outcomes")
        con.unregister("perg_new_outcomes")
    return con


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["relevant", "mixed", "irrelevant"]), OUTCOME), max_size=40)
)
def test_metric_bounds_on_any_input(
    rows: list[tuple[str, Outcome]],
) -> None:
    con = insert_outcomes(rows)
    for by in ("source", "preference", "subject"):
        for row in compute_metrics(con, by=by):
            pvr = row["PVR"]
            assert isinstance(pvr, float) and 0.0 <= pvr <= 100.0
            br, afr, rer = row["BR"], row["AFR"], row["RER"]
            if row["n_qstar"] == 0:
                assert br is None and afr is None and rer is None
                continue
            assert isinstance(br, float) and isinstance(rer, float)
            for metric in ("BR", "RER", "AFR"):
                value, low, high = row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"]
                if value is not None:
                    assert isinstance(value, float) and isinstance(low, float)
                    assert isinstance(high, float)
                    assert 0.0 <= low <= value + 1e-9 and value - 1e-9 <= high <= 100.0
            if row["setting"] == "irrelevant":
                assert afr is None and rer == br
            else:
                assert isinstance(afr, float)
                assert max(br, afr) <= rer <= br + afr + 1e-9


@settings(max_examples=30, deadline=None)
@given(st.lists(OUTCOME, min_size=1, max_size=40))
def test_pooled_metrics_match_a_reference(
    rows: list[Outcome],
) -> None:
    (full,) = [
        r
        for r in compute_metrics(insert_outcomes([("mixed", o) for o in rows]))
        if r["source"] == "full"
    ]
    qstar = [o for o in rows if o[0]]
    correct = sum(1 for o in qstar if o[1] == "A")
    followed = sum(1 for o in qstar if o[2] is not None and o[2] >= 3)
    robust = sum(1 for o in qstar if o[1] == "A" and o[2] is not None and o[2] >= 3)
    union = sum(1 for o in rows if o[0] or o[1] == "A")
    assert full["n_qstar"] == len(qstar)
    if qstar:
        assert full["BR"] == 100 * (len(qstar) - correct) / len(qstar)
        assert full["AFR"] == 100 * (len(qstar) - followed) / len(qstar)
        assert full["RER"] == 100 * (len(qstar) - robust) / len(qstar)
    assert full["PVR"] == (100 * (union - correct) / union if union else 0.0)


# --- thresholds from the protocol, the noise floor, extractor agreement -------------------

PROTOCOL_FIXTURE = Path(__file__).parent / "fixtures" / "core" / "outcomes_protocol.csv"


def test_threshold_comes_from_the_run() -> None:
    """r4 was produced under a protocol with threshold 4 (a 3 is not followed, a 5 is); r3's
    file rows have none and take the loader's. (A results file holds ratings 1-5 only: the
    paper's reader keeps a 6, which live SQL counts as followed, but offline files are
    checked against the scale.)"""
    rows = keyed(compute_metrics(loaded(PROTOCOL_FIXTURE, threshold=3)), "source")
    r4 = [r for r in compute_metrics(loaded(PROTOCOL_FIXTURE)) if r["run_id"] == "r4"]
    relevant = keyed(r4, "source")["relevant", "zero_shot", "full"]
    expect(relevant, n_rows=5, n_qstar=4, n_correct=3, n_followed=3, n_robust=2)
    expect(relevant, BR=25.0, AFR=25.0, RER=50.0, PVR=40.0)
    expect_intervals(relevant, 4, BR=1, AFR=1, RER=2)
    r3 = compute_metrics(loaded(PROTOCOL_FIXTURE, threshold=3), "r3")[-1]
    expect(r3, n_qstar=1, n_followed=1, AFR=0.0)
    r3_strict = compute_metrics(loaded(PROTOCOL_FIXTURE, threshold=5), "r3")[-1]
    expect(r3_strict, n_followed=0, AFR=100.0)
    assert rows  # the file loads whatever the default


def test_noise_floor_hand_computed() -> None:
    """Q* of r4 relevant = rows 0, 1, 2, 4; row 4's baseline ran once (not measured); the
    repeats of rows 1 (C for B) and 2 (unresolved) are wrong: noise BR = 2 / 3."""
    rows = keyed(compute_metrics(loaded(PROTOCOL_FIXTURE), "r4"), "source")
    relevant = rows["relevant", "zero_shot", TQA]
    expect(relevant, n_noise_qstar=3, noise_BR=200 / 3)
    expect_intervals(relevant, 3, noise_BR=2)
    irrelevant = rows["irrelevant", "zero_shot", "full"]
    expect(irrelevant, n_qstar=2, BR=50.0, RER=50.0, AFR=None, n_noise_qstar=2, noise_BR=50.0)
    r3 = compute_metrics(loaded(PROTOCOL_FIXTURE), "r3")[-1]
    expect(r3, n_noise_qstar=0, noise_BR=None, noise_BR_lo=None, noise_BR_hi=None)
    table = format_metrics_table(compute_metrics(loaded(PROTOCOL_FIXTURE), "r4"))
    assert "noise BR [95% CI]" in table.splitlines()[0]
    assert f"66.7 [{wilson(2, 3)[0]:.1f}, {wilson(2, 3)[1]:.1f}]" in table


def test_row_outcomes_state_the_rules_once() -> None:
    con = loaded(PROTOCOL_FIXTURE)
    create_metric_views(con)
    rows = con.execute(
        "SELECT setting, row_id, afr_defined, followed, robust FROM perg_row_outcomes "
        "WHERE run_id = 'r4' ORDER BY setting DESC, row_id"
    ).fetchall()
    assert rows == [
        ("relevant", 0, True, True, True),
        ("relevant", 1, True, False, False),
        ("relevant", 2, True, True, False),
        ("relevant", 3, True, True, True),
        ("relevant", 4, True, True, True),
        ("irrelevant", 0, False, None, True),
        ("irrelevant", 1, False, None, False),
    ]
    sql = (Path(__file__).parents[1] / "perg" / "metrics.sql").read_text(encoding="utf-8")
    assert sql.count("'irrelevant'") == 1 and ">= 3" not in sql


def test_extraction_agreement_hand_computed() -> None:
    con = loaded(PROTOCOL_FIXTURE)
    (pooled,) = compute_agreement(con)  # r3 used the rules extractor: nothing to compare
    expect(pooled, run_id="r4", extractor="llm", n_answers=12, n_disagree=2)
    expect(pooled, n_correctness_differs=2, disagree_rate=100 * 2 / 12)
    expect_intervals({"d_lo": pooled["disagree_rate_lo"], "d_hi": pooled["disagree_rate_hi"]},
                     12, d=2)  # fmt: skip
    by_cell = {
        (r[0], r[1], r[2]): r[3:]
        for r in con.execute(
            "SELECT setting, method, source, n_answers, n_disagree FROM extraction_agreement "
            "WHERE run_id = 'r4'"
        ).fetchall()
    }
    assert by_cell["relevant", "zero_shot", TQA] == (5, 1)
    assert by_cell["relevant", "zero_shot", "full"] == (5, 1)
    assert by_cell["none", "baseline", TQA] == (5, 1)
    assert by_cell["irrelevant", "zero_shot", "full"] == (2, 0)
    (line,) = format_agreement([pooled])
    assert line.startswith("Extraction agreement, run r4: rules vs llm disagree on 2 of 12")


def test_store_carries_threshold_extractor_and_repeats(tmp_path: Path) -> None:
    """Through the sink's store: the spec's threshold decides followed, the rules letters
    stored beside the llm extractor's feed the agreement view, repeats the noise floor."""
    spec = make_spec("stored", 8, settings=("relevant",), methods=("zero_shot",))
    context = dataclasses.replace(spec.context, repeat_baseline=True)
    spec = dataclasses.replace(spec, context=context, followed_threshold=5)
    store = ResultStore(tmp_path / "perg.duckdb")
    store.save_run(spec)
    rows = []
    for v in verdicts(spec, spec.row_ids):  # every answer A (gold), every rating 4
        rules = "B" if v.generation.item.row_id < 2 and v.generation.method != "baseline" else "A"
        rows.append(dataclasses.replace(v, extractor="llm", rules_answer=rules))
    store.save_verdicts(rows)
    (status,) = run_statuses(store.cursor(), "stored")
    assert (status.expected_repeats, status.repeats_stored, status.done) == (8, 0, False)
    rows = []
    for row_id in spec.row_ids:
        repeat = baseline_repeat(spec, row_id, "x", "x")
        answer = "C" if row_id % 4 == 0 else "A"
        rows.append(
            Verdict(
                generation=repeat,
                answer=answer,
                extraction="llm",
                judge_rating=None,
                judge_outcome=None,
                judge_raw=None,
                calls=[],
                extractor="llm",
                rules_answer=answer,
            )
        )
    store.save_verdicts(rows)
    assert run_statuses(store.cursor(), "stored")[0].done
    (full,) = [r for r in compute_metrics(store.cursor(), "stored") if r["source"] == "full"]
    expect(full, n_qstar=8, n_followed=0, AFR=100.0, n_noise_qstar=8, noise_BR=25.0)
    (pooled,) = compute_agreement(store.cursor(), "stored")
    expect(pooled, extractor="llm", n_answers=16, n_disagree=2, n_correctness_differs=2)
    store.close()


# --- the two-step counts of perg_metric_counts equal counting perg_metric_groups directly ----

# perg_metric_counts as first written: one pass over every grouping of every outcome.
DIRECT_COUNTS_SQL = """
SELECT
    run_id, setting, method, dimension, group_key,
    bool_and(afr_defined) AS afr_defined,
    count(*) AS n_rows,
    count(*) FILTER (base_correct) AS n_qstar,
    count(*) FILTER (base_correct AND pref_correct) AS n_correct,
    count(*) FILTER (base_correct AND followed) AS n_followed,
    count(*) FILTER (base_correct AND robust) AS n_robust,
    count(*) FILTER (base_correct OR pref_correct) AS n_union,
    count(*) FILTER (unresolved) AS n_unresolved,
    count(*) FILTER (judge_missing) AS n_judge_missing,
    count(*) FILTER (fallback) AS n_fallback,
    count(*) FILTER (failure) AS n_failure,
    count(*) FILTER (truncated) AS n_truncated,
    count(*) FILTER (base_correct AND repeated) AS n_noise_qstar,
    count(*) FILTER (base_correct AND repeated AND NOT repeat_correct) AS n_noise_broken,
    count(*) FILTER (nopref_invalid) AS n_nopref_invalid,
    count(*) FILTER (pref_invalid) AS n_pref_invalid
FROM perg_metric_groups
GROUP BY run_id, setting, method, dimension, group_key
"""

ANY_OUTCOME = st.tuples(
    st.sampled_from(["r1", "r2"]),
    st.sampled_from(["relevant", "mixed", "irrelevant"]),
    st.sampled_from(["zero_shot", "cot"]),
    st.sampled_from([TQA, MMLU, None]),
    st.sampled_from(["s1", "s2", None]),  # category
    st.sampled_from(["p1", "p2", None]),  # preference
    st.sampled_from(["A", "B", None]),  # no-preference answer (gold is A)
    st.sampled_from(["A", "B", None]),  # preference answer
    st.one_of(st.none(), st.integers(min_value=1, max_value=5)),  # judge rating
    st.sampled_from(["parsed", "unresolved", None]),  # preference extraction
    st.tuples(st.booleans(), st.booleans()),  # parse fallback, parse failure
    st.sampled_from(["stop", "length", None]),  # finish reason
    st.sampled_from(["A", "B", None]),  # repeated no-preference answer
)


@settings(max_examples=40, deadline=None)
@given(st.lists(ANY_OUTCOME, max_size=60))
def test_metric_counts_equal_direct_counting_of_the_groups(
    outcomes: list[tuple[Any, ...]],
) -> None:
    records = [
        dict(zip(OUTCOME_COLUMNS, (
            run, i, source, category, preference, setting, method, "A", nopref, pref, rating,
            None, "parsed", extraction, flags[0], flags[1], finish, 3, "rules", None, None,
            repeat, None if repeat is None else "parsed",
        ), strict=True))
        for i, (run, setting, method, source, category, preference, nopref, pref, rating,
                extraction, flags, finish, repeat) in enumerate(outcomes)
    ]  # fmt: skip
    con = property_connection()
    con.execute("DELETE FROM outcomes")
    if records:
        con.register("perg_new_outcomes", pa.Table.from_pylist(records))
        con.execute("INSERT INTO outcomes BY NAME SELECT * FROM perg_new_outcomes")
        con.unregister("perg_new_outcomes")
    two_step = con.execute("SELECT * FROM perg_metric_counts ORDER BY ALL").fetchall()
    direct = con.execute(f"SELECT * FROM ({DIRECT_COUNTS_SQL}) ORDER BY ALL").fetchall()
    assert two_step == direct
    assert [d[1] for d in con.execute("DESCRIBE perg_metric_counts").fetchall()] == [
        d[1] for d in con.execute(f"DESCRIBE {DIRECT_COUNTS_SQL}").fetchall()
    ]
