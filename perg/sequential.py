"""The sequential gate's test: e-processes on the paired per-row outcomes, valid at every look.

Per gated metric of a pooled setting x method, each shared row gives X = +1 (fails in the
candidate only), -1 (in the reference only) or 0; the true increase is E[X] in points / 100.
Two betting e-processes, each a mixture over a grid of fixed bets (a mixture of test
martingales is one), computed from the three counts alone:

- ``fail_evalue``: against "no increase" (the fixed gate's null, McNemar's p = 1/2 among the
  discordant pairs): prod(1 + l X). The gate FAILS when a metric's reaches (gated metrics) /
  alpha (Bonferroni on e-values: the family-wise error stays at most alpha however often the
  gate looks, Ville's inequality) and, as in the fixed gate, its paired increase so far
  exceeds the threshold and the noise floor.
- ``pass_evalue``: against "the increase is at least ``care``" (the regression the user cares
  about: --mde, default the increase the fixed gate detects at max rows): prod(1 + l (care - X)).
  The gate PASSES early when every gated metric's reaches 1 / (1 - power): a false pass needs
  the e-value of a metric that regressed by ``care`` to cross, probability at most 1 - power,
  the same miss rate the fixed-N gate has at that size.

Neither decided by max rows: the fixed-N gate (McNemar exact + Holm) decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["BETS", "Decision", "SequentialRule", "fail_evalue", "pass_evalue"]

# bets as shares of the largest bet keeping every factor positive, equally weighted
BETS = tuple(0.8 * 0.7**i for i in range(16))

Decision = Literal["fail", "pass", "continue"]


def _mixture(
    worse: int,
    better: int,
    rows: int,
    on_worse: float,
    on_better: float,
    on_tie: float,
    largest: float,
) -> float:
    """mean over BETS of prod(1 + l * x) with x = on_worse / on_better / on_tie per row."""
    ties = rows - worse - better
    logs = []
    for share in BETS:
        bet = share * largest
        logs.append(
            worse * math.log1p(bet * on_worse)
            + better * math.log1p(bet * on_better)
            + ties * math.log1p(bet * on_tie)
        )
    top = max(logs)
    return math.exp(top) * sum(math.exp(v - top) for v in logs) / len(logs)


def fail_evalue(worse: int, better: int) -> float:
    """Evidence that the candidate fails more rows than the reference (an e-value; 1 = none):
    only the discordant pairs count."""
    return _mixture(worse, better, worse + better, 1.0, -1.0, 0.0, 1.0)


def pass_evalue(worse: int, better: int, rows: int, care: float) -> float:
    """Evidence that the increase is below ``care`` points (an e-value; 1 = none)."""
    c = min(care / 100, 0.999)
    return _mixture(worse, better, rows, c - 1, c + 1, c, 1 / (1 - c))


@dataclass(frozen=True, slots=True)
class SequentialRule:
    """When the sequential gate decides: ``alpha`` over ``tests`` gated metrics, and the
    miss rate ``1 - power`` of a regression of the size cared about."""

    alpha: float
    power: float
    tests: int

    def fails(self, worse: int, better: int, rows: int, margin: float) -> bool:
        """This metric's increase is conclusive and beyond ``margin`` points."""
        return (
            rows > 0
            and 100 * (worse - better) / rows > margin
            and fail_evalue(worse, better) >= self.tests / self.alpha
        )

    def decide(self, cells: list[tuple[int, int, int, float, float]]) -> Decision:
        """``cells``: per gated metric (worse, better, rows, margin, care): the increase must
        exceed ``margin`` points to fail (threshold, noise floor), ``care`` is the size cared
        about."""
        if any(self.fails(w, b, n, margin) for w, b, n, margin, _ in cells):
            return "fail"
        pass_at = 1 / (1 - self.power)
        if cells and all(pass_evalue(w, b, n, care) >= pass_at for w, b, n, _, care in cells):
            return "pass"
        return "continue"
