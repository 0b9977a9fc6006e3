"""Periodic Parquet snapshots of the results store, atomic for readers.

The tables are read in one read-only transaction (one consistent snapshot) and streamed in Arrow
batches to Parquet through pyarrow, so the database never needs file access (it has none: see
:mod:`services.sink.live.engine`). Each table goes to a temporary file in the target folder, then is
``os.replace``d over the previous snapshot, so a reader (DuckDB, pandas, pyarrow) opens either
the old or the new file, never a partial one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq

from services.sink.live.engine import Database, read_only_cursor

SNAPSHOT_TABLES = ("results", "baselines", "runs")
_BATCH_ROWS = 65_536


def write_snapshot(store: Database, directory: Path) -> Path:
    """Write ``results.parquet``, ``baselines.parquet`` and ``runs.parquet`` into ``directory``.

    Returns the path of ``results.parquet``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        with read_only_cursor(store) as con:
            for table in SNAPSHOT_TABLES:
                target = directory / f"{table}.parquet"
                temp = directory / f".{table}.{os.getpid()}.parquet.tmp"
                staged.append((temp, target))
                reader = con.sql(f"SELECT * FROM {table}").to_arrow_reader(_BATCH_ROWS)
                with pq.ParquetWriter(temp, reader.schema) as writer:
                    for batch in reader:
                        writer.write_batch(batch)
        for temp, target in staged:
            os.replace(temp, target)
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
    return directory / "results.parquet"
