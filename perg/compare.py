"""Run-to-run comparison and the regression gate.

A comparison sets a candidate run against a reference run (the accepted run it must not be
worse than; not to be confused with the no-preference baseline answer inside each run).
For every setting x method x source (and the pooled 'full'), each metric of both runs (from the
``metrics_by_source`` view, each over its own Q*), the difference, and a paired test on the rows
both runs share: McNemar's exact two-sided test on the per-row failure (broken, not followed,
not robust) over the rows in Q* of both runs. PVR is reported, not tested.

The gate fails when, for the pooled source 'full', a gated metric's paired increase over the
shared rows exceeds its threshold and the test is significant at ``alpha`` (Holm-corrected over
the gated tests by default).

The noise floor: when either run generated its no-preference baseline twice, the larger of the
two runs' ``noise_BR`` (the BR a preference-free re-run shows) is the cell's noise floor for BR
and RER (both count broken answers). A paired change no larger than it is not significant,
whatever the p-value: a preference-free re-run moves the numbers that much.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from perg.errors import InputError
from perg.power import detectable_increase

TESTED_METRICS = ("BR", "AFR", "RER")
NOISE_METRICS = ("BR", "RER")  # the metrics that count broken answers
METRICS = (*TESTED_METRICS, "PVR")
TEST_NAME = (
    "McNemar exact test (two-sided) on the per-row failure, over the rows in Q* of both runs"
)
Correction = Literal["holm", "none"]
DETECT_POWER = 0.8  # the power of the detectable increase a gate states


class CompareInputError(InputError):
    """The two runs cannot be compared (unknown run, different dataset or protocol...)."""


class ResultSource(Protocol):
    """Where results come from: the live sink, the DuckDB file, or the store in-process."""

    def sql(self, query: str) -> dict[str, Any]: ...

    def metrics(self, run_id: str) -> list[dict[str, Any]]: ...


def mcnemar_exact(worse: int, better: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts."""
    n = worse + better
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(worse, better) + 1))
    return min(1.0, 2 * tail / (1 << n))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [1.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Largest tolerated increase, in points, of each gated metric."""

    BR: float | None = None
    AFR: float | None = None
    RER: float | None = 1.0

    @classmethod
    def checked(cls, *, br: float | None, afr: float | None, rer: float | None) -> Thresholds:
        """Thresholds from the command line's --max-*-increase flags, each range-checked."""
        return cls(
            BR=check_threshold(br, "--max-br-increase"),
            AFR=check_threshold(afr, "--max-afr-increase"),
            RER=check_threshold(rer, "--max-rer-increase"),
        )

    def of(self, metric: str) -> float | None:
        value: float | None = getattr(self, metric, None)
        return value


@dataclass(slots=True)
class Cell:
    """One metric of one setting x method x source in both runs, with its paired test."""

    setting: str
    method: str
    source: str
    metric: str
    reference: float | None
    candidate: float | None
    n_shared: int = 0
    worse: int = 0  # shared Q* rows that fail in the candidate only
    better: int = 0  # shared Q* rows that fail in the reference run only
    p_value: float | None = None
    p_adjusted: float | None = None
    noise_floor: float | None = None  # points; the larger noise_BR of the two runs
    test_significant: bool = False  # p adjusted < alpha
    significant: bool = False  # and the change exceeds the noise floor
    gate_failed: bool = False
    detectable: float | None = None  # points the gate fails with DETECT_POWER on these rows

    @property
    def within_noise(self) -> bool:
        """The paired change is no larger than the noise floor."""
        change = self.paired_delta
        return (
            self.noise_floor is not None and change is not None and abs(change) <= self.noise_floor
        )

    @property
    def delta(self) -> float | None:
        if self.reference is None or self.candidate is None:
            return None
        return self.candidate - self.reference

    @property
    def paired_delta(self) -> float | None:
        """Candidate minus reference failure rate over the shared rows, in points."""
        return 100 * (self.worse - self.better) / self.n_shared if self.n_shared else None

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "delta": self.delta,
            "paired_delta": self.paired_delta,
            "within_noise": self.within_noise,
        }


@dataclass
class Comparison:
    """Two runs compared: each run's description, the cells and the test's parameters."""

    reference: dict[str, Any]
    candidate: dict[str, Any]
    cells: list[Cell]
    alpha: float
    correction: Correction
    thresholds: Thresholds | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Cell]:
        return [c for c in self.cells if c.gate_failed]

    def as_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "test": TEST_NAME,
            "alpha": self.alpha,
            "correction": self.correction,
            "thresholds": asdict(self.thresholds) if self.thresholds else None,
            "passed": not self.failures,
            "warnings": self.warnings,
            "cells": [c.as_dict() for c in self.cells],
        }


def check_alpha(alpha: float, where: str = "--alpha") -> float:
    """InputError unless ``alpha`` is a probability strictly between 0 and 1."""
    if not (math.isfinite(alpha) and 0 < alpha < 1):
        raise InputError(f"{where}: must be a number strictly between 0 and 1, got {alpha!r}")
    return alpha


def check_threshold(points: float | None, where: str) -> float | None:
    """InputError unless ``points`` (a tolerated increase) is None or within 0..100 points."""
    if points is not None and not (math.isfinite(points) and 0 <= points <= 100):
        raise InputError(f"{where}: must be a number of points from 0 to 100, got {points!r}")
    return points


_STATE_SQL = "SELECT state, results_stored, expected_results FROM run_states WHERE run_id = {a}"


def candidate_partial(source: ResultSource, candidate: str, *, allow_partial: bool) -> str | None:
    """A warning naming how partial an incomplete or cancelled candidate is (None when it is
    complete); InputError for such a candidate unless ``allow_partial``."""
    rows = _rows(source.sql(_STATE_SQL.format(a=_literal(candidate))))
    if not rows or rows[0]["state"] == "done":
        return None
    state = rows[0]
    kind = "cancelled" if state["state"] == "cancelled" else "incomplete"
    what = (
        f"candidate {candidate!r} is {kind} "
        f"({state['results_stored']}/{state['expected_results']} results stored)"
    )
    if not allow_partial:
        raise CompareInputError(f"{what}: gate it once it is done, or pass --partial")
    return f"{what}: gated on its partial results (--partial)"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_RUNS_SQL = """
SELECT run_id, model, protocol, protocol_sha256, dataset_sha256, n_rows
FROM runs WHERE run_id IN ({a}, {b})
"""

_PAIRED_SQL = """
WITH f AS (
    SELECT run_id, row_id, setting, method, source,
        NOT pref_correct AS broken, NOT followed AS unfollowed, NOT robust AS unrobust
    FROM perg_row_outcomes
    WHERE base_correct AND run_id IN ({a}, {b})
), p AS (
    SELECT a.setting, a.method, a.source,
        a.broken AS a_br, b.broken AS b_br, a.unfollowed AS a_afr, b.unfollowed AS b_afr,
        a.unrobust AS a_rer, b.unrobust AS b_rer
    FROM f AS a JOIN f AS b USING (row_id, setting, method)
    WHERE a.run_id = {a} AND b.run_id = {b}
)
SELECT setting, method, coalesce(source, 'full') AS source, count(*) AS n,
    count(*) FILTER (NOT a_br AND b_br) AS br_worse,
    count(*) FILTER (a_br AND NOT b_br) AS br_better,
    count(*) FILTER (NOT a_afr AND b_afr) AS afr_worse,
    count(*) FILTER (a_afr AND NOT b_afr) AS afr_better,
    count(*) FILTER (NOT a_rer AND b_rer) AS rer_worse,
    count(*) FILTER (a_rer AND NOT b_rer) AS rer_better
FROM p
GROUP BY GROUPING SETS ((setting, method, source), (setting, method))
"""

Key = tuple[str, str, str]


def _rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    columns = result["columns"]
    return [dict(zip(columns, row, strict=True)) for row in result["rows"]]


def load_runs(
    source: ResultSource, reference: str, candidate: str, *, allow_mismatch: bool
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Both runs' descriptions and any mismatch warnings; raise on bad input."""
    found = {
        r["run_id"]: r
        for r in _rows(source.sql(_RUNS_SQL.format(a=_literal(reference), b=_literal(candidate))))
    }
    missing = [r for r in (reference, candidate) if r not in found]
    if missing:
        raise CompareInputError(f"unknown run(s): {', '.join(missing)}")
    a, b = found[reference], found[candidate]
    warnings = [
        f"the runs differ in {what} ({a[column][:12]} vs {b[column][:12]})"
        for what, column in (("dataset", "dataset_sha256"), ("protocol", "protocol_sha256"))
        if a[column] != b[column]
    ]
    if warnings and not allow_mismatch:
        raise CompareInputError("; ".join(warnings) + " (use --allow-mismatch to compare anyway)")
    return a, b, warnings


def compare_runs(
    source: ResultSource,
    reference: str,
    candidate: str,
    *,
    alpha: float = 0.05,
    thresholds: Thresholds | None = None,
    correction: Correction = "holm",
    allow_mismatch: bool = False,
    allow_partial: bool = False,
) -> Comparison:
    """Compare two runs; with ``thresholds``, also decide the gate (an incomplete or
    cancelled candidate only with ``allow_partial``, said in the warnings)."""
    check_alpha(alpha)
    if reference == candidate:
        raise CompareInputError(f"run {candidate!r} cannot be compared with itself")
    a, b, warnings = load_runs(source, reference, candidate, allow_mismatch=allow_mismatch)
    if thresholds is not None:
        partial = candidate_partial(source, candidate, allow_partial=allow_partial)
        warnings += [partial] if partial else []
    values: dict[Key, dict[str, Mapping[str, Any]]] = {}
    for role, run_id in (("reference", reference), ("candidate", candidate)):
        for row in source.metrics(run_id):
            values.setdefault((row["setting"], row["method"], row["source"]), {})[role] = row
    sql = _PAIRED_SQL.format(a=_literal(reference), b=_literal(candidate))
    paired = {(r["setting"], r["method"], r["source"]): r for r in _rows(source.sql(sql))}
    if not paired:
        raise CompareInputError("the runs share no rows in Q*: nothing to compare")
    cells = [
        _cell(key, metric, values[key], paired.get(key))
        for key in values  # the metric views' order: setting, method, source (then 'full')
        for metric in METRICS
    ]
    comparison = Comparison(a, b, cells, alpha, correction, thresholds, warnings)
    _decide(comparison)
    return comparison


def _cell(
    key: Key, metric: str, rows: Mapping[str, Mapping[str, Any]], paired: Mapping[str, Any] | None
) -> Cell:
    ref, cand = rows.get("reference", {}), rows.get("candidate", {})
    cell = Cell(*key, metric=metric, reference=ref.get(metric), candidate=cand.get(metric))
    if metric in NOISE_METRICS:
        floors = [r.get("noise_BR") for r in (ref, cand)]
        cell.noise_floor = max((f for f in floors if f is not None), default=None)
    if paired and metric in TESTED_METRICS and cell.reference is not None:
        cell.n_shared = int(paired["n"])
        cell.worse = int(paired[f"{metric.lower()}_worse"])
        cell.better = int(paired[f"{metric.lower()}_better"])
        cell.p_value = mcnemar_exact(cell.worse, cell.better)
    return cell


def _decide(comparison: Comparison) -> None:
    """Set significance (and, with thresholds, gate failures) on every tested cell."""
    thresholds = comparison.thresholds
    tested = [c for c in comparison.cells if c.p_value is not None]
    family = [c for c in tested if c.source == "full"]
    for group in (family, [c for c in tested if c.source != "full"]):
        raw = [c.p_value or 0.0 for c in group]
        adjusted = holm(raw) if comparison.correction == "holm" else raw
        for cell, p in zip(group, adjusted, strict=True):
            cell.p_adjusted = p
            cell.test_significant = p < comparison.alpha
            cell.significant = cell.test_significant and not cell.within_noise
    if thresholds is None:
        return
    for cell in family:
        limit = thresholds.of(cell.metric)
        increase = cell.paired_delta
        cell.gate_failed = (
            limit is not None and cell.significant and increase is not None and increase > limit
        )
        if limit is not None and cell.reference is not None:
            cell.detectable = detectable_increase(
                cell.n_shared,
                alpha=comparison.alpha / len(family),
                power=DETECT_POWER,
                limit=limit,
                floor=cell.noise_floor or 0.0,
                ceiling=100 - cell.reference,
            )
