"""How fast the sink's API serves a page of the per-row explorer and of the changed rows, at
``--stored`` results (default 1M) while a writer keeps upserting, as the sink does.

Fills a store with two full runs (every setting x method; the candidate breaks more rows),
serves it with the sink's own API (services.sink.live.api.create_app) on a free port, and times each
kind of page over HTTP: no filter, an outcome, an MMLU subject, a part of the preference, a
deep page, one row, and the changed rows of the comparison. Prints the p95 per kind and over
all pages.

    .venv/bin/python benchmarks/explorer_pages.py [--stored 1000000] [--pages 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import aiohttp
from aiohttp import web
from fixtures.live.runs import fails, make_spec, verdicts

from perg.protocol import METHODS, SETTINGS
from services.sink.live.api import create_app
from services.sink.store import ResultStore

BATCH_ROWS = 2000


def fill(store: ResultStore, stored: int) -> int:
    """Two runs of ``stored / 2`` results each; returns the rows per run."""
    rows_per_run = stored // 2 // (len(SETTINGS) * len(METHODS))
    for run_id, broken in (("reference", 5), ("candidate", 12)):
        spec = make_spec(run_id, rows_per_run, settings=SETTINGS, methods=METHODS)
        store.save_run(spec)
        for first in range(0, rows_per_run, BATCH_ROWS):
            rows = range(first, min(first + BATCH_ROWS, rows_per_run))
            store.save_verdicts(
                verdicts(spec, rows, base_wrong=fails("base", 20, per_cell=False),
                         pref_wrong=fails(run_id, broken), unfollowed=fails("f", 10))
            )  # fmt: skip
    return rows_per_run


PAGES = {
    "first page": "/api/runs/candidate/rows",
    "broken": "/api/runs/candidate/rows?outcome=broken&setting=relevant",
    "MMLU subject": "/api/runs/candidate/rows?subject=virology&method=cot",
    "preference part": "/api/runs/candidate/rows?preference=preference%202&outcome=not_followed",
    "deep page": "/api/runs/candidate/rows?page=300&page_size=100",
    "one row": "/api/runs/candidate/rows?row_id=123",
    "changed rows": "/api/changed?reference=reference&candidate=candidate&metric=BR"
    "&direction=broke&setting=relevant&method=zero_shot",
}


async def measure(store: ResultStore, n_pages: int) -> dict[str, list[float]]:
    runner = web.AppRunner(create_app(store, token=None))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    timings: dict[str, list[float]] = {kind: [] for kind in PAGES}
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            for _ in range(n_pages):
                for kind, path in PAGES.items():
                    started = time.perf_counter()
                    async with http.get(path) as response:
                        await response.read()
                        if response.status != 200:
                            raise SystemExit(f"{kind}: {response.status} {await response.text()}")
                    timings[kind].append(time.perf_counter() - started)
    finally:
        await runner.cleanup()
    return timings


def p95_ms(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=1_000_000, help="results stored")
    parser.add_argument("--pages", type=int, default=30, help="requests of each kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp) / "bench.duckdb")
        started = time.perf_counter()
        rows_per_run = fill(store, args.stored)
        (count,) = store.con.execute("SELECT count(*) FROM results").fetchone() or (0,)
        print(f"stored {count} results ({rows_per_run} rows x {len(SETTINGS) * len(METHODS)} "
              f"conditions x 2 runs) in {time.perf_counter() - started:.0f} s")  # fmt: skip

        stop = threading.Event()
        written = [0]

        def ingest() -> None:  # the sink keeps writing: redeliveries of the candidate's rows
            spec = make_spec("candidate", rows_per_run, settings=SETTINGS, methods=METHODS)
            again = verdicts(spec, range(BATCH_ROWS), pref_wrong=fails("candidate", 12))
            while not stop.is_set():
                store.save_verdicts(again)
                written[0] += len(again)

        writer = threading.Thread(target=ingest)
        writer.start()
        ingest_started = time.perf_counter()
        try:
            timings = asyncio.run(measure(store, args.pages))
        finally:
            stop.set()
            writer.join()
        rate = written[0] / (time.perf_counter() - ingest_started)
        print(f"while the writer upserted {rate:.0f} verdicts/s:")
        for kind, values in timings.items():
            print(f"  {kind:16s} p95 {p95_ms(values):6.1f} ms  median "
                  f"{statistics.median(values) * 1000:6.1f} ms")  # fmt: skip
        every = [v for values in timings.values() for v in values]
        print(f"all pages        p95 {p95_ms(every):6.1f} ms over {len(every)} requests "
              "(goal: under 300 ms)")  # fmt: skip
        store.close()


if __name__ == "__main__":
    main()
