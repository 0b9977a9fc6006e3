"""Parquet snapshots are atomic: readable, and only ever whole batches, while the sink writes.

A snapshot file is replaced, never rewritten in place, so a reader that opens it once (DuckDB, or
pyarrow given an open file) sees one whole version. (pyarrow given a *path* opens it twice and
can mix two versions; see docs/sql.md.)
"""

from __future__ import annotations

import threading
import time
from contextlib import closing
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
from fixtures.live.runs import fails, make_spec, verdicts

from services.sink.live.engine import harden
from services.sink.live.snapshots import write_snapshot
from services.sink.store import ResultStore

BATCH = 5
CELLS = 4


def test_snapshot_tables(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "perg.duckdb")
    spec = make_spec("r1", 10)
    store.save_run(spec)
    store.save_verdicts(verdicts(spec, range(10)))
    path = write_snapshot(store, tmp_path / "snap")
    assert path == tmp_path / "snap" / "results.parquet"
    assert pq.read_table(path).num_rows == 10 * CELLS
    assert pq.read_table(tmp_path / "snap" / "baselines.parquet").num_rows == 10
    assert pq.read_table(tmp_path / "snap" / "runs.parquet").column("run_id").to_pylist() == ["r1"]
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == [
        "baselines.parquet", "results.parquet", "runs.parquet"
    ]  # fmt: skip
    store.close()


def test_snapshot_of_a_hardened_store(tmp_path: Path) -> None:
    """The sink's database has no file access once its API is up: snapshots go through pyarrow
    and match the tables exactly."""
    store = ResultStore(tmp_path / "perg.duckdb")
    spec = make_spec("r1", 10)
    store.save_run(spec)
    store.save_verdicts(verdicts(spec, range(10)))
    with closing(store.cursor()) as con:
        harden(con)
    path = write_snapshot(store, tmp_path / "snap")
    stored = store.con.sql("SELECT * FROM results ORDER BY ALL").to_arrow_table()
    assert (
        pq.read_table(path)
        .sort_by([(n, "ascending") for n in stored.column_names])
        .equals(stored.sort_by([(n, "ascending") for n in stored.column_names]))
    )
    store.close()


def test_snapshots_readable_while_the_sink_writes(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "perg.duckdb")
    spec = make_spec("live", 150)
    store.save_run(spec)
    folder = tmp_path / "snap"
    write_snapshot(store, folder)
    done = threading.Event()
    errors: list[BaseException] = []

    def sink() -> None:
        try:
            for start in range(0, 150, BATCH):
                store.save_verdicts(
                    verdicts(spec, range(start, start + BATCH), pref_wrong=fails("x", 30))
                )
                if start % (4 * BATCH) == 0:
                    write_snapshot(store, folder)
            write_snapshot(store, folder)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=sink)
    thread.start()
    reader = duckdb.connect()  # a separate reader, as pandas or a notebook would be
    counts = []
    while not done.is_set():
        results = reader.sql(f"SELECT count(*) FROM '{folder}/results.parquet'").fetchall()[0][0]
        assert results % (BATCH * CELLS) == 0
        with (folder / "baselines.parquet").open("rb") as handle:  # one open: one version
            assert pq.read_table(handle).num_rows % BATCH == 0
        counts.append(results)
        time.sleep(0.005)  # let the writer thread have the GIL
    thread.join()
    assert not errors
    assert len(set(counts)) > 2, "the reads should have overlapped the writes"
    final = reader.sql(f"SELECT count(*) FROM '{folder}/results.parquet'").fetchall()[0][0]
    assert final == 150 * CELLS
    assert not [p for p in folder.iterdir() if p.suffix == ".tmp"]
    store.close()
