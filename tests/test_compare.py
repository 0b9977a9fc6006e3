"""Paired statistics and the regression gate, on runs whose differences are known in advance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fixtures.live.runs import Rule, baseline_repeat, fails, make_spec, write_run
from hypothesis import given
from hypothesis import strategies as st

from perg.cli import main
from perg.compare import holm, mcnemar_exact
from schemas import RunSpec, Verdict
from services.sink.store import ResultStore

ROWS = 400
METHODS = ("zero_shot",)  # one method keeps the fixture quick to write
BASE_WRONG = fails("nopref", 20, per_cell=False)  # the same no-preference answers in every run


def test_mcnemar_exact_known_values() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_exact(3, 12) == pytest.approx(
        2 * sum(math.comb(15, k) for k in range(4)) / 2**15
    )
    assert mcnemar_exact(5, 5) == 1.0


@given(st.integers(0, 300), st.integers(0, 300))
def test_mcnemar_is_symmetric_and_a_probability(worse: int, better: int) -> None:
    p = mcnemar_exact(worse, better)
    assert 0 < p <= 1
    assert p == mcnemar_exact(better, worse)


def test_holm() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == []


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base; worse (8 more points of breakage on the same rows, everything else equal);
    noise (same rates, different rows); other-data (a different dataset hash)."""
    path = tmp_path_factory.mktemp("gate") / "perg.duckdb"
    store = ResultStore(path)
    rules = {"base_wrong": BASE_WRONG, "unfollowed": fails("follow", 10)}
    write_run(
        store, make_spec("base", ROWS, methods=METHODS), pref_wrong=fails("pref", 10), **rules
    )
    write_run(
        store, make_spec("worse", ROWS, methods=METHODS), pref_wrong=fails("pref", 18), **rules
    )
    write_run(store, make_spec("noise", ROWS, methods=METHODS), base_wrong=BASE_WRONG,
              pref_wrong=fails("pref-2", 10), unfollowed=fails("follow-2", 10))  # fmt: skip
    write_run(store, make_spec("other-data", ROWS, methods=METHODS, dataset_sha256="e" * 64),
              pref_wrong=fails("pref", 10), **rules)  # fmt: skip
    store.close()
    return path


@pytest.fixture
def offline(db: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No sink answers: the CLI reads the results file."""
    monkeypatch.setenv("PERG_DB", str(db))
    monkeypatch.setenv("PERG_SINK_URL", "http://127.0.0.1:9")
    return db


def test_gate_flags_a_known_regression(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate", "base", "worse", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["passed"] and report["test"].startswith("McNemar exact")
    # the run compared against is the reference run (the baseline is the no-preference answer)
    assert (report["reference"]["run_id"], report["candidate"]["run_id"]) == ("base", "worse")
    assert all("reference" in c and "baseline" not in c for c in report["cells"])
    failed = {(c["setting"], c["method"], c["metric"]) for c in report["cells"] if c["gate_failed"]}
    assert failed == {("relevant", "zero_shot", "RER"), ("irrelevant", "zero_shot", "RER")}
    for cell in report["cells"]:
        if cell["source"] == "full" and cell["metric"] == "BR":
            # the candidate breaks a superset of the reference run's rows: ~8 points, never better
            assert cell["better"] == 0 and 5 < cell["paired_delta"] < 11
        if cell["metric"] == "AFR" and cell["p_value"] is not None:
            assert cell["worse"] == cell["better"] == 0  # judge outcomes identical


def test_gate_passes_noise(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate", "base", "noise"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "McNemar exact" in out


def test_gate_thresholds(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate", "base", "worse", "--max-rer-increase", "20"]) == 0
    assert (
        main(["gate", "base", "worse", "--max-rer-increase", "20", "--max-br-increase", "2"]) == 1
    )
    assert main(["gate", "worse", "base"]) == 0  # an improvement never fails the gate
    capsys.readouterr()


def test_gate_bad_input_exits_2(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate", "base", "nope"]) == 2
    assert "unknown run(s): nope" in capsys.readouterr().err
    assert main(["gate", "base", "other-data"]) == 2
    assert "dataset" in capsys.readouterr().err
    assert main(["gate", "base", "other-data", "--allow-mismatch"]) == 0
    assert "Warning: the runs differ in dataset" in capsys.readouterr().out


def test_compare_text_and_markdown(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "base", "worse"]) == 0  # a report, not a gate
    out = capsys.readouterr().out
    assert "relevant" in out and "cais/mmlu" in out and "worse" in out and "FAIL" not in out
    assert "Reference: base " in out and "Candidate: worse " in out
    assert main(["gate", "base", "worse", "--markdown"]) == 1
    md = capsys.readouterr().out
    assert md.startswith("## PERG gate: ❌ FAIL")
    assert "Reference `base`" in md and "candidate `worse`" in md
    assert "| setting | method | source | metric |" in md and "<details>" in md


# --- the noise floor -------------------------------------------------------------------------


def write_repeats(store: ResultStore, spec: RunSpec, wrong: Rule) -> None:
    """The repeated no-preference answers of a run (wrong where ``wrong`` says)."""
    repeats = []
    for row_id in spec.row_ids:
        generation = baseline_repeat(spec, row_id, "The answer is X.", "The answer is A.")
        answer = "B" if wrong(row_id, "", "") else "A"
        repeats.append(
            Verdict(
                generation=generation,
                answer=answer,
                extraction="parsed",
                judge_rating=None,
                judge_outcome=None,
                judge_raw=None,
                calls=[],
                rules_answer=answer,
            )
        )
    store.save_verdicts(repeats)


@pytest.fixture(scope="module")
def noisy_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs of a model whose own re-run breaks ~15% of its Q* rows; the candidate breaks 8
    points more than the reference run, significantly by McNemar, but within the noise floor."""
    path = tmp_path_factory.mktemp("noise") / "perg.duckdb"
    store = ResultStore(path)
    rules = {"base_wrong": BASE_WRONG, "unfollowed": fails("follow", 10)}
    for run_id, pref in (("n-base", 10), ("n-worse", 18)):
        spec = make_spec(run_id, ROWS, methods=METHODS)
        write_run(store, spec, pref_wrong=fails("pref", pref), **rules)
        write_repeats(store, spec, fails("rerun", 15, per_cell=False))
    store.close()
    return path


def test_a_regression_within_the_noise_floor_is_not_significant(
    noisy_db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PERG_DB", str(noisy_db))
    monkeypatch.setenv("PERG_SINK_URL", "http://127.0.0.1:9")
    assert main(["gate", "n-base", "n-worse", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    full = {
        (c["setting"], c["metric"]): c
        for c in report["cells"]
        if c["source"] == "full" and c["method"] == "zero_shot"
    }
    br = full["relevant", "BR"]
    assert 10 < br["noise_floor"] < 20 and 5 < br["paired_delta"] < br["noise_floor"]
    assert br["test_significant"] and br["within_noise"] and not br["significant"]
    assert full["relevant", "RER"]["within_noise"] and not full["relevant", "RER"]["gate_failed"]
    assert full["relevant", "AFR"]["noise_floor"] is None  # the noise floor is about answers
    assert main(["compare", "n-base", "n-worse"]) == 0
    out = capsys.readouterr().out
    assert "noise floor" in out and " noise" in out
    # without repeats the same regression fails the gate (test_gate_flags_a_known_regression)


# --- a gate that cannot be switched off by accident (issue 17 item 8) -------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--alpha", "2"], ["--alpha", "-1"], ["--alpha", "0"], ["--alpha", "nan"],
        ["--alpha", "inf"], ["--alpha", "1"], ["--max-br-increase", "nan"],
        ["--max-br-increase", "-5"], ["--max-br-increase", "1e308"],
        ["--max-rer-increase", "inf"], ["--max-afr-increase", "-0.1"],
    ],
)  # fmt: skip
def test_out_of_range_alpha_and_thresholds_exit_2(
    offline: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    assert main(["gate", "base", "worse", *flags]) == 2
    err = capsys.readouterr().err
    assert flags[0] in err and len(err.strip().splitlines()) == 1


def test_a_run_is_never_gated_against_itself(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gate", "base", "base"]) == 2
    assert "cannot be compared with itself" in capsys.readouterr().err


@pytest.fixture
def partial_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """base, and a candidate with about half its results stored."""
    path = tmp_path / "perg.duckdb"
    store = ResultStore(path)
    rules = {"base_wrong": BASE_WRONG, "unfollowed": fails("follow", 10)}
    write_run(store, make_spec("base", 200, methods=METHODS), pref_wrong=fails("pref", 10), **rules)
    write_run(store, make_spec("half", 100, methods=METHODS), pref_wrong=fails("pref", 10), **rules)
    store.con.execute(  # the spec asked for twice the rows stored
        "UPDATE runs SET n_rows = 2 * n_rows, expected_results = 2 * expected_results "
        "WHERE run_id = 'half'"
    )
    store.close()
    monkeypatch.setenv("PERG_DB", str(path))
    monkeypatch.setenv("PERG_SINK_URL", "http://127.0.0.1:9")
    return path


def test_an_incomplete_candidate_needs_partial(
    partial_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gate", "base", "half"]) == 2
    assert "is incomplete" in capsys.readouterr().err
    assert main(["gate", "base", "half", "--partial", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert any("gated on its partial results (--partial)" in w for w in report["warnings"])
