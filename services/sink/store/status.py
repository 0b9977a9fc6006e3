"""The status of the runs: what ``perg status`` and ``GET /api/runs`` report, in one query."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import duckdb

from schemas import fan_out
from schemas.values import Method, Setting


@dataclass(frozen=True, slots=True)
class RunStatus:
    """Progress of one run, as ``perg status`` and ``GET /api/runs`` report it.

    ``expected_*`` come from the run's spec; ``generated``, ``aligned``, ``baselines_stored``
    and ``results_stored`` count what the sink has stored so far; ``retries`` sums the model
    call retries of the stored answers; ``dead_letters`` counts the run's failed messages;
    ``expected_repeats`` / ``repeats_stored`` count the second baselines of a noise-floor run.
    """

    run_id: str
    model: str
    protocol: str
    created_at: str  # ISO 8601, UTC
    n_rows: int
    expected_results: int
    expected_generations: int
    expected_aligned: int
    generated: int
    aligned: int
    baselines_stored: int
    results_stored: int
    retries: int
    dead_letters: int
    expected_repeats: int = 0  # repeated baselines of a run with a noise floor
    repeats_stored: int = 0
    cancelled: bool = False  # perg cancel (or the sequential gate) stopped it
    lineage: str | None = None
    version: str | None = None

    @property
    def done(self) -> bool:
        """Every expected result and baseline is stored."""
        return (
            self.results_stored >= self.expected_results
            and self.baselines_stored >= self.n_rows
            and self.repeats_stored >= self.expected_repeats
        )

    @property
    def state(self) -> str:
        """``done``, else ``cancelled`` (its stored results are partial), else ``running``."""
        return "done" if self.done else "cancelled" if self.cancelled else "running"

    def as_dict(self) -> dict[str, Any]:
        """The fields, ``done``, ``state`` and ``partial`` (not done), JSON-ready."""
        return {
            **dataclasses.asdict(self),
            "done": self.done,
            "state": self.state,
            "partial": not self.done,
        }


# One aggregate per table over the picked runs' rows, joined to the runs: ~2x faster than a
# correlated subquery per count (DuckDB 2.0.1, 1M results: 9 ms against 22 ms), and a run's
# rows are found by its run_id's zone maps when the store holds many runs.
_STATUS_SQL = """
WITH picked AS (
    SELECT * FROM runs WHERE $run_id IS NULL OR run_id = $run_id
), generations AS (
    SELECT run_id,
        count(*) FILTER (stage <> 'aligned' AND method <> 'baseline_repeat') AS generated,
        count(*) FILTER (stage = 'aligned') AS aligned
    FROM progress WHERE run_id IN (SELECT run_id FROM picked) GROUP BY run_id
), stored_baselines AS (
    SELECT run_id, count(*) AS n, sum(retries) AS retries
    FROM baselines WHERE run_id IN (SELECT run_id FROM picked) GROUP BY run_id
), stored_results AS (
    SELECT run_id, count(*) AS n, sum(retries) AS retries
    FROM results WHERE run_id IN (SELECT run_id FROM picked) GROUP BY run_id
), letters AS (
    SELECT run_id, count(*) AS n
    FROM dead_letters WHERE run_id IN (SELECT run_id FROM picked) GROUP BY run_id
), repeats AS (
    SELECT run_id, count(*) AS n
    FROM baseline_repeats WHERE run_id IN (SELECT run_id FROM picked) GROUP BY run_id
)
SELECT
    r.run_id, r.model, r.protocol, strftime(r.created_at, '%Y-%m-%dT%H:%M:%SZ'),
    r.n_rows, r.expected_results, r.settings, r.methods,
    coalesce(r.spec->>'$.context.repeat_baseline' = 'true', false),
    coalesce(g.generated, 0),
    coalesce(g.aligned, 0),
    coalesce(b.n, 0),
    coalesce(s.n, 0),
    coalesce(b.retries, 0) + coalesce(s.retries, 0),
    coalesce(d.n, 0),
    coalesce(x.n, 0),
    c.run_id IS NOT NULL,
    r.lineage,
    r.version
FROM picked AS r
LEFT JOIN generations AS g USING (run_id)
LEFT JOIN stored_baselines AS b USING (run_id)
LEFT JOIN stored_results AS s USING (run_id)
LEFT JOIN letters AS d USING (run_id)
LEFT JOIN repeats AS x USING (run_id)
LEFT JOIN run_cancels AS c USING (run_id)
ORDER BY r.created_at
"""


def run_statuses(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> list[RunStatus]:
    """The status of one run (``run_id``), or of every stored run oldest first; ``con`` is a
    connection to the store, e.g. ``ResultStore(path, read_only=True).cursor()``."""
    rows = con.execute(_STATUS_SQL, {"run_id": run_id}).fetchall()
    return [_status(*row) for row in rows]


def _status(
    run_id: str,
    model: str,
    protocol: str,
    created_at: str,
    n_rows: int,
    expected_results: int,
    settings: list[Setting],
    methods: list[Method],
    repeat_baseline: bool,
    generated: int,
    aligned: int,
    baselines_stored: int,
    results_stored: int,
    retries: int,
    dead_letters: int,
    repeats_stored: int,
    cancelled: bool,
    lineage: str | None,
    version: str | None,
) -> RunStatus:
    """A status row with its expected counts: the rows times the fan-out of the run's
    settings and methods (schemas.fan_out, the rule the generator follows), so the SQL
    returns the run's lists and never restates the rule."""
    needs = fan_out(settings, methods, repeat_baseline)
    return RunStatus(
        run_id=run_id,
        model=model,
        protocol=protocol,
        created_at=created_at,
        n_rows=n_rows,
        expected_results=expected_results,
        expected_generations=n_rows * needs.generations,
        expected_aligned=n_rows * len(needs.aligned),
        generated=generated,
        aligned=aligned,
        baselines_stored=baselines_stored,
        results_stored=results_stored,
        retries=retries,
        dead_letters=dead_letters,
        expected_repeats=n_rows * needs.repeats,
        repeats_stored=repeats_stored,
        cancelled=cancelled,
        lineage=lineage,
        version=version,
    )
