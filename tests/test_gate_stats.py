"""The gate's power (perg plan, the detectable increase) and the sequential gate's test, by
exact computation and by simulation (a fast version of benchmarks/gate_simulation.py)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from fixtures.live.runs import fails, make_spec, write_run

from perg.cli import main
from perg.power import detectable_increase, gate_power, rows_needed
from perg.sequential import fail_evalue, pass_evalue
from services.sink.store import ResultStore

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import gate_simulation

pytest_plugins = ["test_compare"]  # its results-file fixtures: base, worse, noise
BASE_WRONG = fails("nopref", 20, per_cell=False)
METHODS = ("zero_shot",)


def test_power_grows_with_the_increase_and_the_rows() -> None:
    options = {"alpha": 0.05 / 3, "limit": 1.0, "floor": 3.0}
    assert gate_power(600, 0.0, **options) < 0.01
    assert gate_power(600, 2.0, **options) < gate_power(600, 5.0, **options) < 1
    assert gate_power(300, 5.0, **options) < gate_power(1200, 5.0, **options)
    found = detectable_increase(600, power=0.8, **options)
    assert found is not None and gate_power(600, found, **options) >= 0.8
    assert gate_power(600, found - 0.05, **options) < 0.8
    needed = rows_needed(found, power=0.8, **options)
    assert needed is not None and abs(needed - 600) < 60  # the inverse, up to discreteness
    assert rows_needed(2.0, power=0.8, **options) is None  # within the noise floor: never


def test_exact_power_matches_a_simulated_gate() -> None:
    rng = random.Random(7)
    rows, delta = 400, 5.0
    fails = 0
    for _ in range(1500):
        worse = better = 0
        for _ in range(rows):
            u = rng.random()
            worse += u < 0.08
            better += 0.08 <= u < 0.11
        fails += gate_simulation.fixed_gate_fails(worse, better, rows)
    exact = gate_power(rows, delta, alpha=0.05 / 3, limit=1.0, floor=3.0)
    assert abs(fails / 1500 - exact) < 0.04  # Holm's first step = the exact level here


def test_evalues() -> None:
    assert fail_evalue(0, 0) == pytest.approx(1.0)
    assert fail_evalue(30, 2) > 100 > fail_evalue(10, 8)
    assert pass_evalue(0, 0, 0, 5.0) == pytest.approx(1.0)
    assert pass_evalue(10, 10, 600, 5.0) > 10 > pass_evalue(40, 10, 600, 5.0)


def test_simulated_gates_meet_the_issue_bounds() -> None:
    """(a) the sequential gate looking after every batch fails at most alpha with no change;
    (b) the fixed gate fails >= 80% at the increase perg plan states for N (400 reps: a
    margin of two standard errors); (c) rows used: <= 0.6 N with no change, <= 0.35 N at
    twice that increase."""
    found = gate_simulation.figures(reps=400, rows=600, seed=3)
    assert found["a_sequential_fail_rate_no_change"] <= 0.05
    assert found["b_fixed_fail_rate_at_plan_increase"] >= 0.76
    assert found["c_rows_share_no_change"] <= 0.6
    assert found["c_rows_share_twice_plan"] <= 0.35
    assert found["c_sequential_fail_rate_twice_plan"] >= 0.95


def test_plan_states_the_detectable_increase_and_rows_needed(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--reference", "base", "--rows", "400", "--mde", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "extra failures fall on rows the reference passes" in report["assumption"]
    plans = report["plans"]
    assert {p["metric"] for p in plans} == {"RER"} and len(plans) == 2  # two settings
    assert main(["gate", "base", "noise", "--json"]) == 0
    cells = json.loads(capsys.readouterr().out)["cells"]
    family = [c for c in cells if c["source"] == "full" and c["p_value"] is not None]
    for p in plans:  # the level of the gate's Holm family (its first step)
        assert 0 < p["detectable_increase"] < 10 and p["level"] == pytest.approx(0.05 / len(family))
        assert p["rows_needed"] is not None and p["rows_needed"] < 400  # 8 > detectable
    assert main(["plan", "--reference", "base", "--rows", "4000"]) == 0
    assert "detectable +pts" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags",
    [["--rows", "0"], ["--rows", "10", "--alpha", "2"], ["--rows", "10", "--power", "1"],
     ["--rows", "10", "--mde", "nan"], ["--rows", "10", "--max-rer-increase", "-1"]],
)  # fmt: skip
def test_plan_bad_input_exits_2(
    offline: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    assert main(["plan", "--reference", "base", *flags]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_gate_states_what_its_shared_rows_could_detect(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gate", "base", "noise"]) == 0
    assert "Detectable on the shared rows (80% power)" in capsys.readouterr().out
    assert main(["gate", "base", "noise", "--json"]) == 0
    cells = json.loads(capsys.readouterr().out)["cells"]
    rer = [c for c in cells if c["source"] == "full" and c["metric"] == "RER"]
    assert all(0 < c["detectable"] < 10 for c in rer)


# --- the sequential gate on a results file ---------------------------------------------------


@pytest.fixture
def streaming_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """base (400 rows); 'regressed' (8 points more breakage) and 'same' (identical outcomes),
    each with half of its 400 rows stored so far. Returns the cancellations asked for."""
    path = tmp_path / "perg.duckdb"
    store = ResultStore(path)
    rules = {"base_wrong": BASE_WRONG, "unfollowed": fails("follow", 10)}
    write_run(store, make_spec("base", 400, methods=METHODS), pref_wrong=fails("pref", 10), **rules)
    for run_id, pref in (("regressed", 18), ("same", 10)):
        write_run(store, make_spec(run_id, 200, methods=METHODS), pref_wrong=fails("pref", pref),
                  **rules)  # fmt: skip
    store.con.execute(  # the specs asked for twice the rows stored: still running
        "UPDATE runs SET n_rows = 2 * n_rows, expected_results = 2 * expected_results "
        "WHERE run_id <> 'base'"
    )
    store.close()
    monkeypatch.setenv("PERG_DB", str(path))
    monkeypatch.setenv("PERG_SINK_URL", "http://127.0.0.1:9")
    cancelled: list[tuple[str, str]] = []

    def cancel_run(settings: object, client: object, run_id: str, reason: str) -> bool:
        cancelled.append((run_id, reason))
        return True

    monkeypatch.setattr("perg.cli.compare.cancel_run", cancel_run)  # no broker in this test
    return cancelled


def test_sequential_gate_fails_early_and_cancels(
    streaming_db: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gate", "base", "regressed", "--sequential", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    early = "sequential gate: FAIL settled early (e-process beyond alpha) at 200/400"
    assert any(w.startswith(early)
               for w in report["warnings"])  # fmt: skip
    assert any(c["gate_failed"] and c["metric"] == "RER" for c in report["cells"])
    assert streaming_db == [("regressed", "perg gate --sequential: fail at 200 rows")]


def test_sequential_gate_passes_early_and_cancels(
    streaming_db: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gate", "base", "same", "--sequential"]) == 0
    out = capsys.readouterr().out
    assert "PASS settled early (the increase cared about is excluded) at 200/400 rows" in out
    assert streaming_db == [("same", "perg gate --sequential: pass at 200 rows")]


def test_sequential_gate_gives_up_on_a_candidate_that_stores_nothing_new(
    streaming_db: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Half stored and no worker left (nothing new arrives), and too few rows to exclude an
    increase of 0.1 points: undecided, so the gate stops after --stall-timeout, exit 3."""
    argv = ["gate", "base", "same", "--sequential", "--mde", "0.1", "--stall-timeout", "1"]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("perg gate: run 'same' stored nothing new for 1 s at 200/400 rows")
    assert streaming_db == []  # nothing decided: nothing cancelled


def test_without_sequential_the_partial_candidate_is_refused(
    streaming_db: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gate", "base", "same"]) == 2
    assert "is incomplete" in capsys.readouterr().err and not streaming_db
