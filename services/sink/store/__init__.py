"""The DuckDB results store, owned by the sink process (DuckDB allows one writer process).

Every write is one transaction and an upsert on the record's idempotency key, so a redelivered
message never creates a second row and a reader never sees half a batch. The modules:

- :mod:`.tables`: the columns of every table of ``store.sql``, declared once (row types, the
  verdict tables' column lists), and the Arrow tables built from them;
- :mod:`.database`: :class:`ResultStore`, opening the file and the upserts;
- :mod:`.cells`: the kept metric tables, up to date in every write transaction;
- :mod:`.status`: :class:`RunStatus` and the status query.

The same transaction keeps three tables of metrics.sql up to date, ``perg_cells`` (the counts
of every finest cell), ``perg_metric_values`` (the metric values of those cells) and
``perg_outcome_flags`` (every outcome's keys and verdicts without its texts), so the metric
views read a few hundred rows however many results are stored and the explorer pages over
narrow columns, and both always agree with the rows (see :mod:`.cells`).

Reading, as a library (only the sink may open the file for writing)::

    store = ResultStore(Path("perg-results/perg.duckdb"), read_only=True)
    for status in run_statuses(store.cursor()):
        print(status.run_id, status.results_stored, "/", status.expected_results)
    store.cursor().sql("SELECT * FROM metrics_by_source WHERE source = 'full'").show()
"""

from services.sink.store.database import ResultStore
from services.sink.store.status import RunStatus, run_statuses

__all__ = ["ResultStore", "RunStatus", "run_statuses"]
