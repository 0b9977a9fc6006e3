"""The power of the regression gate: what N shared rows can detect, and the rows a size needs.

The gate (perg.compare) fails a gated metric when McNemar's exact two-sided test on the rows
both runs share in Q* is significant after Holm's correction over the pooled tests, and the
paired increase exceeds the threshold and the noise floor. This module computes that rule's
probability of failing exactly (no normal approximation), under one stated model of the
paired outcomes:

- the candidate's extra failures fall on rows the reference run passes: a true increase of
  ``delta`` is a share ``delta`` of the shared rows failing in the candidate only;
- beyond it, both runs disagree by chance as much as the reference disagrees with itself: its
  noise BR (a preference-free re-run's breakage) in each direction for BR and RER, none where
  it was not measured (AFR, or runs without --repeat-baseline) - the floor of discordance;
- the level is Holm's first step, alpha / (number of pooled tests): the power under Holm is at
  least this.

    detectable_increase(rows=450, alpha=0.05 / 6, power=0.8, limit=1.0, floor=0.0)  # points
    rows_needed(delta=5.0, alpha=0.05 / 6, power=0.8, limit=1.0, floor=0.0)         # rows
"""

from __future__ import annotations

import math
from functools import cache

__all__ = ["MAX_ROWS", "detectable_increase", "gate_power", "rows_needed"]

MAX_ROWS = 200_000  # rows_needed searches up to this many shared rows
_SPREAD = 8.0  # standard deviations of the discordant count summed over (the rest < 1e-12)


def _log_pmf(n: int, p: float, k: int) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def _upper_tail(n: int, p: float, k: int) -> float:
    """P(Binomial(n, p) >= k)."""
    if k <= 0:
        return 1.0
    return min(1.0, sum(math.exp(_log_pmf(n, p, j)) for j in range(k, n + 1)))


@cache
def _mcnemar_critical(discordant: int, level: float) -> int:
    """The smallest count of candidate-only failures among ``discordant`` pairs whose exact
    two-sided McNemar p-value is below ``level`` (discordant + 1 when none is)."""
    tail = 0.0
    for worse in range(discordant, discordant // 2, -1):
        tail += math.exp(_log_pmf(discordant, 0.5, worse))
        if 2 * tail >= level:
            return worse + 1
    return discordant + 1


def gate_power(rows: int, delta: float, *, alpha: float, limit: float, floor: float) -> float:
    """P(the gate fails the metric) on ``rows`` shared rows for a true increase of ``delta``
    points, a threshold ``limit`` and a noise floor ``floor`` (points; the floor is also the
    chance discordance in each direction), at McNemar level ``alpha``."""
    worse, better = (floor + delta) / 100, floor / 100
    discordance = min(1.0, worse + better)
    if rows <= 0 or discordance <= 0:
        return 0.0
    share_worse = worse / discordance
    margin = rows * max(limit, floor) / 100  # the paired increase must exceed it
    mean = rows * discordance
    spread = _SPREAD * math.sqrt(mean * (1 - discordance)) + 1
    total = 0.0
    for d in range(max(0, int(mean - spread)), min(rows, int(mean + spread)) + 1):
        # fail: worse - better = 2 * worse - d > margin, and the test is significant
        needed = max(_mcnemar_critical(d, alpha), math.floor((d + margin) / 2) + 1)
        if needed <= d:
            total += math.exp(_log_pmf(rows, discordance, d)) * _upper_tail(d, share_worse, needed)
    return min(1.0, total)


def detectable_increase(
    rows: int, *, alpha: float, power: float, limit: float, floor: float, ceiling: float = 100.0
) -> float | None:
    """The smallest true increase (points, 0.01 resolution) the gate fails with ``power`` on
    ``rows`` shared rows; None when none up to ``ceiling`` (the reference's successes) is."""
    ceiling = max(0.0, ceiling - floor)
    if gate_power(rows, ceiling, alpha=alpha, limit=limit, floor=floor) < power:
        return None
    low, high = 0.0, ceiling
    while high - low > 0.01:
        mid = (low + high) / 2
        if gate_power(rows, mid, alpha=alpha, limit=limit, floor=floor) >= power:
            high = mid
        else:
            low = mid
    return round(high, 2)


def rows_needed(
    delta: float, *, alpha: float, power: float, limit: float, floor: float
) -> int | None:
    """The fewest shared rows on which the gate fails a true increase of ``delta`` points with
    ``power``; None when even MAX_ROWS do not (delta within the threshold or noise floor)."""
    if delta <= max(limit, floor) or delta <= 0:
        return None

    def enough(rows: int) -> bool:
        return gate_power(rows, delta, alpha=alpha, limit=limit, floor=floor) >= power

    high = 16
    while not enough(high):
        if high >= MAX_ROWS:
            return None
        high = min(MAX_ROWS, high * 2)
    low = high // 2
    while high - low > 1:  # power is not quite monotone in rows (a discrete test): close enough
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high
