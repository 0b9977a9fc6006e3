"""The lineage view's data: the lineages stored, and one lineage's versions with their pooled
metrics, intervals, noise floor, gate verdicts and acceptances (view lineage_history of
services/sink/store/lineage.sql), read through the sink's read-only API.

A lineage name is checked (:func:`perg.lineage.check_lineage`: :class:`RowQueryError`, HTTP
400) before it reaches DuckDB as a bound parameter; an unknown one is :class:`NotFound` (404).
"""

from __future__ import annotations

from typing import Any

import duckdb

from perg.errors import InputError
from perg.lineage import check_lineage
from services.sink.live.rows import NotFound, RowQueryError, records

# Per metric of the chart, its columns of lineage_history: (value, interval low, high).
CHART_METRICS: dict[str, tuple[str, str | None, str | None]] = {
    "BR": ("BR", "BR_lo", "BR_hi"),
    "AFR": ("AFR", "AFR_lo", "AFR_hi"),
    "RER": ("RER", "RER_lo", "RER_hi"),
    "PVR": ("PVR", None, None),  # secondary: no interval
}

_VERSIONS_SQL = """
SELECT position, run_id, version, strftime(created_at, '%Y-%m-%dT%H:%M:%SZ') AS created_at,
    state, n_rows, results_stored, n_qstar, BR, BR_lo, BR_hi, AFR, AFR_lo, AFR_hi, RER, RER_lo,
    RER_hi, PVR, noise_BR, noise_BR_lo, noise_BR_hi, verdict, reference_run_id, accepted,
    strftime(accepted_at, '%Y-%m-%dT%H:%M:%SZ') AS accepted_at
FROM lineage_history WHERE lineage = $lineage ORDER BY position
"""

_LINEAGES_SQL = """
SELECT lineage, count(*) AS versions, count(*) FILTER (accepted) AS accepted,
    arg_max(run_id, position) AS latest_run_id
FROM lineage_history GROUP BY lineage ORDER BY lineage
"""


def lineages(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Every lineage: its number of versions (runs), of accepted ones, and its latest run."""
    con.execute(_LINEAGES_SQL)
    return records(con)


def lineage_versions(con: duckdb.DuckDBPyConnection, name: str) -> dict[str, Any]:
    """One lineage's runs oldest first, each with the chart's values (:data:`CHART_METRICS`)."""
    try:
        check_lineage(name)
    except InputError as exc:
        raise RowQueryError(str(exc)) from None
    con.execute(_VERSIONS_SQL, {"lineage": name})
    versions = records(con)
    if not versions:
        raise NotFound(f"unknown lineage {name[:80]!r}: no run was submitted with it")
    return {"lineage": name, "metrics": list(CHART_METRICS), "versions": versions}
