"""The gate's power (perg plan, the detectable increase) and the sequential gate's test, by
exact computation and by simulation (a fast version of benchmarks/gate_simulation.py)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from perg.cli import main
from perg.power import detectable_increase, gate_power, rows_needed
from perg.sequential import fail_evalue, pass_evalue

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import gate_simulation

pytest_plugins = ["test_compare"]  # its results-file fixtures: base, worse, noise


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
