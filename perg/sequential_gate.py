"""``perg gate --sequential``: follow a candidate while its results stream in, decide as soon as
the verdict is settled (perg.sequential: e-processes valid at every look), then cancel the rest.

Every ``poll_s`` it compares the candidate's stored rows with the reference (the same paired
counts as the fixed gate, over the rows both share in Q*). FAIL as soon as a gated metric's
evidence of an increase beyond its threshold and noise floor is conclusive; PASS as soon as
every gated metric's increase is shown below the size cared about (``care``: --mde, default
what the fixed gate detects at max rows, perg plan). Neither by max rows (or the run's end):
the fixed-N gate decides. A run stopped early is cancelled (perg.cancel.cancel_run); the
verdict says how many rows decided it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from perg.compare import Cell, Comparison, Correction, ResultSource, Thresholds, compare_runs
from perg.errors import InputError, UnavailableError
from perg.lineage import run_state
from perg.sequential import Decision, SequentialRule

log = logging.getLogger("perg.gate")

__all__ = ["SequentialVerdict", "follow_gate"]

STATE_WAIT_S = 30.0  # how long a just-submitted candidate may take to appear
DEFAULT_STALL_S = 900.0  # how long a candidate may store nothing new before the gate gives up


@dataclass(frozen=True, slots=True)
class SequentialVerdict:
    decision: Decision  # "fail" / "pass" early, "continue" = left to the fixed-N gate
    rows: int  # candidate rows stored when it decided
    max_rows: int
    stop_early: bool  # rows remain: the run is to be cancelled


def _gated(comparison: Comparison) -> list[Cell]:
    limits = comparison.thresholds or Thresholds(RER=None)
    return [
        c
        for c in comparison.cells
        if c.source == "full" and c.p_value is not None and limits.of(c.metric) is not None
    ]


def _inputs(
    cells: list[Cell], thresholds: Thresholds, care: Callable[[Cell], float]
) -> list[tuple[int, int, int, float, float]]:
    return [
        (
            c.worse,
            c.better,
            c.n_shared,
            max(thresholds.of(c.metric) or 0.0, c.noise_floor or 0.0),
            care(c),
        )
        for c in cells
    ]


def follow_gate(
    source: ResultSource,
    reference: str,
    candidate: str,
    *,
    thresholds: Thresholds,
    alpha: float,
    power: float,
    care: Callable[[Cell], float],
    max_rows: int | None,
    correction: Correction = "holm",
    allow_mismatch: bool = False,
    poll_s: float = 1.0,
    stall_s: float = DEFAULT_STALL_S,
) -> tuple[Comparison, SequentialVerdict]:
    """Follow ``candidate`` until decided; return the final comparison (its gate failures set
    by the sequential decision when one was reached) and the verdict. A candidate that stores
    nothing new for ``stall_s`` seconds (its workers stopped) is :class:`UnavailableError`."""
    deadline = time.monotonic() + STATE_WAIT_S
    while (state := run_state(source, candidate)) is None:
        if time.monotonic() > deadline:
            raise InputError(f"unknown run {candidate!r}")
        time.sleep(poll_s)
    limit = min(max_rows or state["n_rows"], state["n_rows"])
    seen, changed = None, time.monotonic()
    while True:
        state = run_state(source, candidate) or state
        rows = int(state["baselines_stored"])
        if (progress := tuple(state.values())) != seen:
            seen, changed = progress, time.monotonic()
        elif time.monotonic() - changed >= stall_s:
            raise UnavailableError(
                f"run {candidate!r} stored nothing new for {stall_s:g} s at {rows}/{limit} rows: "
                "are its workers running? (--stall-timeout)"
            )
        comparison = _compare(
            source,
            reference,
            candidate,
            thresholds=thresholds,
            alpha=alpha,
            correction=correction,
            allow_mismatch=allow_mismatch,
        )
        cells = _gated(comparison) if comparison else []
        rule = SequentialRule(alpha=alpha, power=power, tests=max(1, len(cells)))
        decision = rule.decide(_inputs(cells, thresholds, care)) if cells else "continue"
        finished = state["state"] != "running" or rows >= limit
        log.info("run=%s sequential gate: %d/%d rows, %s", candidate, rows, limit, decision)
        if decision != "continue" or finished:
            break
        time.sleep(poll_s)
    if comparison is None:
        raise InputError(f"candidate {candidate!r} shares no rows in Q* with {reference!r}")
    if decision != "continue":  # the sequential verdict replaces the fixed-N one
        for cell, (w, b, n, margin, _) in zip(cells, _inputs(cells, thresholds, care), strict=True):
            cell.gate_failed = decision == "fail" and rule.fails(w, b, n, margin)
    verdict = SequentialVerdict(decision, rows, limit, stop_early=state["state"] == "running")
    comparison.warnings.append(_say(verdict))
    return comparison, verdict


def _compare(
    source: ResultSource,
    reference: str,
    candidate: str,
    *,
    thresholds: Thresholds,
    alpha: float,
    correction: Correction,
    allow_mismatch: bool,
) -> Comparison | None:
    """The comparison over the rows stored so far, None while they share none."""
    try:
        return compare_runs(
            source,
            reference,
            candidate,
            alpha=alpha,
            thresholds=thresholds,
            correction=correction,
            allow_mismatch=allow_mismatch,
            allow_partial=True,
        )
    except InputError as exc:
        if "share no rows" in str(exc):  # none stored yet
            return None
        raise


def _say(verdict: SequentialVerdict) -> str:
    how = {
        "fail": "FAIL settled early (e-process beyond alpha)",
        "pass": "PASS settled early (the increase cared about is excluded)",
        "continue": "not settled early: the fixed-N gate decided",
    }[verdict.decision]
    rest = "; the rest of the run is cancelled" if verdict.stop_early else ""
    return f"sequential gate: {how} at {verdict.rows}/{verdict.max_rows} rows{rest}"
