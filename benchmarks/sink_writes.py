"""How fast the sink stores verdicts: one upsert transaction per batch, as in the sink.

Prints rows/s for batches of 500 verdicts into a fresh on-disk DuckDB store, and a second
pass of the same keys (the redelivery case: every row replaced, none added).

    .venv/bin/python benchmarks/sink_writes.py [--rows 5000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fixtures.live.runs import make_spec, verdicts

from services.sink.store import ResultStore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000, help="dataset rows (x5 verdicts)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp) / "bench.duckdb")
        spec = make_spec("bench", args.rows)
        batch = verdicts(spec, range(args.rows))
        store.save_run(spec)
        for label in ("first write", "redelivery"):
            start = time.perf_counter()
            for i in range(0, len(batch), 500):
                store.save_verdicts(batch[i : i + 500])
            elapsed = time.perf_counter() - start
            print(f"{label:12s} {len(batch):6d} verdicts  {len(batch) / elapsed:9.0f} rows/s")
        (count,) = store.con.execute("SELECT count(*) FROM results").fetchone() or (0,)
        print(f"results rows stored: {count} (one per key)")


if __name__ == "__main__":
    main()
