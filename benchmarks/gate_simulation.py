"""Simulated gates on paired per-row outcomes: the sequential gate's error rate and rows used,
the fixed-N gate's power at the increase ``perg plan`` states (issue 17, tests and figures).

One pooled setting x method, three tested metrics (BR, AFR, RER) Holm-corrected as in the
gate, RER gated (threshold 1 point); a reference RER of 30% over N shared rows, and a chance
discordance of FLOOR points in each direction (the measured noise floor). Per row the RER
outcome is: fails in the candidate only with probability (FLOOR + delta) / 100, in the
reference only with FLOOR / 100; BR and AFR never change. The sequential gate looks after
every batch of BATCH rows (perg.sequential.SequentialRule), else the fixed-N gate decides
at N (perg.compare: McNemar exact, Holm, the threshold and noise floor).

    .venv/bin/python benchmarks/gate_simulation.py [--reps 2000] [--rows 600] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

from perg.compare import holm, mcnemar_exact
from perg.power import detectable_increase
from perg.sequential import SequentialRule

ALPHA, POWER, LIMIT, FLOOR, REFERENCE_RER, BATCH = 0.05, 0.8, 1.0, 3.0, 30.0, 25
TESTS = 3  # BR, AFR, RER: the gate's Holm family for one setting x method


@dataclass(frozen=True, slots=True)
class Outcome:
    fixed_failed: bool  # the fixed-N gate on all N rows
    sequential: str  # "fail" / "pass" (early or at N)
    rows_used: int


def plan_increase(rows: int) -> float:
    """What ``perg plan`` states for ``rows`` shared rows (same model, same level)."""
    found = detectable_increase(rows, alpha=ALPHA / TESTS, power=POWER, limit=LIMIT,
                                floor=FLOOR, ceiling=100 - REFERENCE_RER)  # fmt: skip
    assert found is not None
    return found


def fixed_gate_fails(worse: int, better: int, rows: int) -> bool:
    """perg.compare's rule: Holm over the three metrics, significant, beyond the threshold and
    noise floor (BR and AFR unchanged: p = 1)."""
    p_rer = holm([mcnemar_exact(worse, better), 1.0, 1.0])[0]
    return p_rer < ALPHA and 100 * (worse - better) / rows > max(LIMIT, FLOOR)


def one_gate(rng: random.Random, rows: int, delta: float, care: float) -> Outcome:
    rule = SequentialRule(alpha=ALPHA, power=POWER, tests=1)
    p_worse, p_better = (FLOOR + delta) / 100, FLOOR / 100
    worse = better = 0
    decided: str | None = None
    used = rows
    for n in range(1, rows + 1):
        u = rng.random()
        worse += u < p_worse
        better += p_worse <= u < p_worse + p_better
        if decided is None and n % BATCH == 0 and n < rows:
            verdict = rule.decide([(worse, better, n, max(LIMIT, FLOOR), care)])
            if verdict != "continue":
                decided, used = verdict, n
    fixed = fixed_gate_fails(worse, better, rows)
    return Outcome(fixed, decided or ("fail" if fixed else "pass"), used)


def scenario(reps: int, rows: int, delta: float, care: float, seed: int) -> list[Outcome]:
    rng = random.Random(seed)
    return [one_gate(rng, rows, delta, care) for _ in range(reps)]


def figures(reps: int, rows: int, seed: int) -> dict[str, float]:
    planned = plan_increase(rows)
    care = planned  # the sequential gate's default: what the fixed gate detects at max rows
    none = scenario(reps, rows, 0.0, care, seed)
    at_plan = scenario(reps, rows, planned, care, seed + 1)
    twice = scenario(reps, rows, 2 * planned, care, seed + 2)
    return {
        "plan_increase_points": planned,
        "a_sequential_fail_rate_no_change": sum(o.sequential == "fail" for o in none) / reps,
        "b_fixed_fail_rate_at_plan_increase": sum(o.fixed_failed for o in at_plan) / reps,
        "b_sequential_fail_rate_at_plan_increase": sum(o.sequential == "fail" for o in at_plan)
        / reps,
        "c_rows_share_no_change": sum(o.rows_used for o in none) / (reps * rows),
        "c_rows_share_twice_plan": sum(o.rows_used for o in twice) / (reps * rows),
        "c_sequential_fail_rate_twice_plan": sum(o.sequential == "fail" for o in twice) / reps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"{args.reps} gates per scenario, {args.rows} rows, batch {BATCH}, alpha {ALPHA}, "
          f"RER threshold {LIMIT}, noise floor {FLOOR}, reference RER {REFERENCE_RER}")  # fmt: skip
    for name, value in figures(args.reps, args.rows, args.seed).items():
        print(f"{name:42s} {value:.3f}")


if __name__ == "__main__":
    main()
