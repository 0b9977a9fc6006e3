"""Periodic Parquet snapshots of the results store, atomic for readers.

Each table is copied to a temporary file in the target folder, then ``os.replace``d over the
previous snapshot, so a reader (DuckDB, pandas, pyarrow) opens either the old or the new file,
never a partial one. All tables are copied within one transaction: one consistent snapshot.
"""

from __future__ import annotations

import os
from pathlib import Path

from perg.store import ResultStore

SNAPSHOT_TABLES = ("results", "baselines", "runs")


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def write_snapshot(store: ResultStore, directory: Path) -> Path:
    """Write ``results.parquet``, ``baselines.parquet`` and ``runs.parquet`` into ``directory``.

    Returns the path of ``results.parquet``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    con = store.cursor()
    try:
        con.execute("BEGIN TRANSACTION")
        for table in SNAPSHOT_TABLES:
            target = directory / f"{table}.parquet"
            temp = directory / f".{table}.{os.getpid()}.parquet.tmp"
            con.execute(f"COPY {table} TO {_sql_path(temp)} (FORMAT parquet)")
            staged.append((temp, target))
        con.execute("COMMIT")
        for temp, target in staged:
            os.replace(temp, target)
    finally:
        con.close()
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
    return directory / "results.parquet"
