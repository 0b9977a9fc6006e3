"""Pipeline throughput, end to end on the real broker with workers as processes.

    .venv/bin/python benchmarks/pipeline.py [--rows 400] [--slots 32] [--service-s 0.25]
        [--scale-rows 200] [--instant-rows 400] [--warmup-rows 100] [--stored 1000000]
        [--only P1,P2,P3,P4,P5] [--metrics-cost] [--security-cost]

Starts Kafka (``$PERG_KAFKA`` if set, else a broker in a temporary folder), the scripted model
double (``tests/model_double.py``) and the four services (``perg worker``), and prints, each as
a ratio measured in this run:

* P1: achieved model calls/s / the double's capacity K/T (its busy fraction), steady state
  (between 10% and 90% of the run's calls) and end to end (submit to the last result stored),
  for ``--rows`` rows on a double serving K=``--slots`` calls at once, T=``--service-s`` each;
  then again with 1, 2 and 4 generator processes (``--scale-rows`` rows each);
* P2: the speed-up over a sequential, paper-style loop (one call at a time) on that double;
* P3: stored results/s end to end with an instant double (``--instant-rows`` rows), after a
  warm-up run of ``--warmup-rows`` rows on the same pipeline (the broker's JIT, connections);
* P4: sink upsert rows/s, and the p95 latency of a live metric query with ``--stored``
  results stored while the sink keeps ingesting;
* P5: peak RSS of each worker process (VmHWM), after P1 and after P3.

``--metrics-cost``: P3 twice more, on pipelines with metrics off and on (every worker serving
/metrics, scraped every ``--scrape-s`` seconds, as Prometheus would but more often), each after
its warm-up, alternating ``--metrics-rounds`` times; prints stored results/s on / off.

``--security-cost``: P3 on a cluster of its own (``deploy/kafka.sh start --secure --brokers
N``, N = ``--security-brokers``; never ``$PERG_KAFKA``), alternating ``--security-rounds``
times between a pipeline whose clients (workers and ``perg submit``) use its PLAINTEXT
listener and one whose clients use its SASL_SSL listener (SCRAM-SHA-512, TLS; client.env),
each after its warm-up; prints each round (with the workers' and the brokers' CPU seconds per
1000 stored results) and stored results/s SASL_SSL / PLAINTEXT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import orjson  # noqa: E402
from kafka_fixture import broker_session, secure_kafka  # noqa: E402
from pipeline_harness import DATA_DIR, Pipeline, wait_until  # noqa: E402

from perg.client import ClientTuning, Endpoint, ModelClient  # noqa: E402
from perg.dataset import load_dataset, stratified_sample  # noqa: E402
from perg.protocol import load_protocol  # noqa: E402


def _stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=10) as response:
        stats: dict[str, Any] = orjson.loads(response.read())
    return stats


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far; NaN once it is gone (another
    engineer's broker that stopped meanwhile)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _brokers() -> list[int]:
    """Kafka brokers on this machine (the one this benchmark started among them)."""
    return [
        int(pid.name)
        for pid in Path("/proc").iterdir()
        if pid.name.isdigit() and b"kafka.Kafka" in _cmdline(pid)
    ]


def _cmdline(pid: Path) -> bytes:
    try:
        return (pid / "cmdline").read_bytes()
    except OSError:
        return b""


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def _pipeline(
    bootstrap: str,
    workdir: Path,
    generators: int,
    *double: str,
    metrics: bool = False,
    kafka_security: dict[str, str] | None = None,
) -> Iterator[Pipeline]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    pipeline = Pipeline(
        bootstrap, workdir, prefix, generators, metrics=metrics, kafka_security=kafka_security or {}
    )
    try:
        pipeline.model_url = pipeline.start_double(*double)
        pipeline.workers.start_all(generators=generators)
        pipeline.wait_for_sink()
        yield pipeline
    finally:
        pipeline.stop()


def _run(pipeline: Pipeline, rows: int) -> dict[str, Any]:
    """Submit ``rows`` rows and follow the double's counters until the run is stored."""
    samples: list[tuple[float, int]] = []
    processes = {**pipeline.workers.procs, "model-double": pipeline.doubles[0]}
    pids = {name: p.pid for name, p in processes.items()}
    pids.update({f"kafka-broker-{pid}": pid for pid in _brokers()})
    cpu_before = {name: _cpu_s(pid) for name, pid in pids.items()}
    calls_before = int(_stats(pipeline.model_url).get("calls", 0))  # earlier runs' calls
    started = time.monotonic()
    run_id = pipeline.submit("--sample", str(rows), "--seed", "1")
    submitted = time.monotonic() - started

    def done() -> bool:
        calls = int(_stats(pipeline.model_url).get("calls", 0)) - calls_before
        samples.append((time.monotonic(), calls))
        return bool((pipeline.status(run_id) or {}).get("done"))

    wait_until(done, f"run {run_id}", timeout_s=1800, poll_s=0.25)
    wall = time.monotonic() - started
    status = pipeline.status(run_id) or {}
    calls = samples[-1][1]
    low = next(s for s in samples if s[1] >= 0.1 * calls)
    high = next(s for s in samples if s[1] >= 0.9 * calls)
    steady = (high[1] - low[1]) / (high[0] - low[0]) if high[0] > low[0] else float("nan")
    rss = {name: _peak_rss_mb(p.pid) for name, p in pipeline.workers.procs.items()}
    cpu = {name: _cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
    return {
        "wall_s": wall,
        "submit_s": submitted,
        "calls": calls,
        "calls_per_s": calls / wall,
        "steady_calls_per_s": steady,
        "results": status.get("results_stored", 0),
        "rss_mb": rss,
        "cpu_s": cpu,
    }


async def _sequential(url: str, calls: int) -> float:
    """Calls/s of a paper-style loop: one row's prompts, one call at a time."""
    protocol = load_protocol("paper", DATA_DIR)
    items = stratified_sample(load_dataset(DATA_DIR / "pergdata.csv"), 10, 1)
    messages = [protocol.baseline_messages(item, "system") for item in items]
    async with ModelClient(
        Endpoint(url, "scripted-double"), tuning=ClientTuning(max_in_flight=1)
    ) as client:
        started = time.perf_counter()
        for i in range(calls):
            chat = [{"role": m["role"], "content": m["content"]} for m in messages[i % 10]]
            await client.chat(chat, max_tokens=protocol.max_tokens("answer"))
        return calls / (time.perf_counter() - started)


@contextmanager
def _scraping(pipeline: Pipeline, every_s: float) -> Iterator[list[int]]:
    """Scrape every worker's /metrics every ``every_s`` seconds meanwhile; yields the count."""
    urls = [pipeline.workers.metrics_url(name) + "/metrics" for name in pipeline.workers.procs]
    scrapes = [0]
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(every_s):
            for url in urls:
                with urllib.request.urlopen(url, timeout=10) as response:
                    response.read()
                scrapes[0] += 1

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield scrapes
    finally:
        stop.set()
        thread.join()


def p3_metrics_cost(
    bootstrap: str, work: Path, rows: int, warmup: int, rounds: int, every_s: float
) -> tuple[list[float], list[float], int]:
    """Stored results/s of P3 with metrics off and on (scraped), alternating round by round,
    and the scrapes made."""
    rates: dict[bool, list[float]] = {False: [], True: []}
    scrapes = 0
    for round_ in range(rounds):
        for metrics in (False, True):
            folder = work / f"m{round_}-{int(metrics)}"
            with _pipeline(bootstrap, folder, 1, metrics=metrics) as pipeline:
                if warmup > 0:
                    _run(pipeline, warmup)
                if metrics:
                    with _scraping(pipeline, every_s) as count:
                        run = _run(pipeline, rows)
                    scrapes += count[0]
                else:
                    run = _run(pipeline, rows)
                rates[metrics].append(run["results"] / run["wall_s"])
    return rates[False], rates[True], scrapes


def p3_security_cost(
    brokers: int, work: Path, rows: int, warmup: int, rounds: int, say: Callable[[str], None]
) -> tuple[list[float], list[float]]:
    """Stored results/s of P3 over PLAINTEXT and over SASL_SSL on one secured cluster,
    alternating round by round; each round said as it ends, with the CPU seconds per 1000
    stored results of the four workers and of the cluster's brokers."""
    rates: dict[bool, list[float]] = {False: [], True: []}
    with secure_kafka(brokers) as kafka:
        ours = {f"kafka-broker-{int(f.read_text())}" for f in kafka.state_dir.rglob("kafka.pid")}
        for round_ in range(rounds):
            cpu: dict[bool, tuple[float, float]] = {}
            for secured in (False, True):
                folder = work / f"s{round_}-{int(secured)}"
                security = kafka.sasl_ssl if secured else {}
                with _pipeline(kafka.plaintext, folder, 1, kafka_security=security) as pipeline:
                    if warmup > 0:
                        _run(pipeline, warmup)
                    run = _run(pipeline, rows)
                    workers = set(pipeline.workers.procs)
                rates[secured].append(run["results"] / run["wall_s"])
                per_k = 1000 / max(run["results"], 1)
                spent = run["cpu_s"]
                cpu[secured] = (
                    per_k * sum(v for name, v in spent.items() if name in workers),
                    per_k * sum(v for name, v in spent.items() if name in ours),
                )
            plain, sasl = rates[False][-1], rates[True][-1]
            (w_plain, b_plain), (w_sasl, b_sasl) = cpu[False], cpu[True]
            say(f"P3 security round {round_ + 1}/{rounds}: PLAINTEXT {plain:.0f}, SASL_SSL "
                f"{sasl:.0f} stored results/s (SASL_SSL/PLAINTEXT {sasl / plain:.3f}); CPU s "
                f"per 1000 stored results, PLAINTEXT / SASL_SSL: workers {w_plain:.2f} / "
                f"{w_sasl:.2f}, brokers {b_plain:.2f} / {b_sasl:.2f}")  # fmt: skip
    return rates[False], rates[True]


def p4_sink(stored: int) -> tuple[float, float]:
    """Upsert rows/s into the store; p95 of a live metric query at ``stored`` results while
    a writer keeps upserting."""
    from fixtures.live.runs import make_spec, verdicts

    from perg.protocol import METHODS, SETTINGS
    from services.sink.live.query import QueryLimits, StoreReader, favour_live_queries
    from services.sink.store import ResultStore

    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp) / "bench.duckdb")
        # a full run: every setting x method, so ``stored`` counts result rows (plus baselines)
        rows_per_run = stored // (len(SETTINGS) * len(METHODS))
        spec = make_spec("bench", rows_per_run, settings=SETTINGS, methods=METHODS)
        store.save_run(spec)
        batch_rows = 2000
        saving_s, written = 0.0, 0
        for first in range(0, rows_per_run, batch_rows):
            batch = verdicts(spec, range(first, min(first + batch_rows, rows_per_run)))
            started = time.perf_counter()  # the store's time only, not building the records
            store.save_verdicts(batch)
            saving_s += time.perf_counter() - started
            written += len(batch)
        upsert_rate = written / saving_s

        stop = threading.Event()

        def ingest() -> None:
            again = verdicts(spec, range(0, batch_rows))
            while not stop.is_set():
                store.save_verdicts(again)

        favour_live_queries()  # as the sink's live API does in the sink process
        writer = threading.Thread(target=ingest)
        writer.start()
        reader = StoreReader(store, QueryLimits())
        latencies = []
        try:
            for _ in range(40):
                t0 = time.perf_counter()
                reader.metrics("bench")
                latencies.append(time.perf_counter() - t0)
        finally:
            stop.set()
            writer.join()
        p95 = statistics.quantiles(latencies, n=20)[-1]
        return upsert_rate, p95 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--service-s", type=float, default=0.25)
    parser.add_argument("--scale-rows", type=int, default=200, help="0: skip the scale-out")
    parser.add_argument("--instant-rows", type=int, default=400)
    parser.add_argument("--warmup-rows", type=int, default=100, help="P3's warm-up run; 0: none")
    parser.add_argument("--stored", type=int, default=1_000_000)
    parser.add_argument("--only", default="P1,P2,P3,P4,P5")
    parser.add_argument("--metrics-cost", action="store_true",
                        help="P3 with metrics off vs on (served and scraped)")  # fmt: skip
    parser.add_argument("--metrics-rounds", type=int, default=2)
    parser.add_argument("--scrape-s", type=float, default=1.0)
    parser.add_argument("--security-cost", action="store_true",
                        help="P3 over SASL_SSL vs PLAINTEXT, secured cluster")  # fmt: skip
    parser.add_argument("--security-rounds", type=int, default=2)
    parser.add_argument("--security-brokers", type=int, default=1, choices=range(1, 10))
    args = parser.parse_args()
    only = set(args.only.upper().split(","))
    capacity = args.slots / args.service_s
    shape = ("--slots", str(args.slots), "--service-s", str(args.service_s))
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    with broker_session() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if only & {"P1", "P2", "P5"}:
            with _pipeline(bootstrap, work / "p1", 1, *shape) as pipeline:
                p1 = _run(pipeline, args.rows)
                say(f"P1 {args.rows} rows, K={args.slots}, T={args.service_s}s: "
                    f"{p1['calls']} calls in {p1['wall_s']:.1f}s; busy fraction steady "
                    f"{p1['steady_calls_per_s'] / capacity:.3f}, end to end "
                    f"{p1['calls_per_s'] / capacity:.3f}")  # fmt: skip
                if "P2" in only:
                    n = max(20, int(8 / args.service_s))
                    sequential = asyncio.run(_sequential(pipeline.model_url, n))
                    say(f"P2 sequential loop {sequential:.2f} calls/s; pipeline speed-up "
                        f"{p1['calls_per_s'] / sequential:.1f}x = "
                        f"{p1['calls_per_s'] / sequential / args.slots:.2f} K")  # fmt: skip
                if "P5" in only:
                    rss = ", ".join(f"{n} {v:.0f}" for n, v in sorted(p1["rss_mb"].items()))
                    say(f"P5 peak RSS after P1 (MB): {rss}")
        if "P1" in only and args.scale_rows > 0:
            for generators in (1, 2, 4):
                with _pipeline(bootstrap, work / f"g{generators}", generators, *shape) as pipe:
                    run = _run(pipe, args.scale_rows)
                    say(f"P1 scale-out {generators} generator(s), {args.scale_rows} rows: "
                        f"steady {run['steady_calls_per_s'] / capacity:.3f}, end to end "
                        f"{run['calls_per_s'] / capacity:.3f}")  # fmt: skip
        if only & {"P3", "P5"}:
            with _pipeline(bootstrap, work / "p3", 1) as pipeline:
                if args.warmup_rows > 0:
                    _run(pipeline, args.warmup_rows)
                p3 = _run(pipeline, args.instant_rows)
                say(f"P3 instant double, {args.instant_rows} rows: {p3['results']} results in "
                    f"{p3['wall_s']:.1f}s = {p3['results'] / p3['wall_s']:.0f} stored "
                    f"results/s ({p3['calls_per_s']:.0f} calls/s; perg submit took "
                    f"{p3['submit_s']:.1f}s)")  # fmt: skip
                rss = ", ".join(f"{n} {v:.0f}" for n, v in sorted(p3["rss_mb"].items()))
                say(f"P5 peak RSS after P3 (MB): {rss}")
                per_k = 1000 / max(p3["results"], 1)
                cpu = ", ".join(f"{n} {v * per_k:.2f}" for n, v in sorted(p3["cpu_s"].items()))
                say(f"P3 CPU seconds per 1000 stored results, submit to stored: {cpu}")
        if "P3" in only and args.metrics_cost:
            off, on, scrapes = p3_metrics_cost(
                bootstrap, work, args.instant_rows, args.warmup_rows, args.metrics_rounds,
                args.scrape_s,
            )  # fmt: skip
            ratio = statistics.mean(on) / statistics.mean(off)
            say(f"P3 metrics cost, {args.instant_rows} rows x {args.metrics_rounds} rounds: "
                f"stored results/s off {' '.join(f'{r:.0f}' for r in off)}, on "
                f"{' '.join(f'{r:.0f}' for r in on)} ({scrapes} scrapes, every "
                f"{args.scrape_s:g}s per worker): mean on/off = {ratio:.3f}")  # fmt: skip
    if "P3" in only and args.security_cost:
        with tempfile.TemporaryDirectory() as tmp:
            plain, sasl = p3_security_cost(
                args.security_brokers, Path(tmp), args.instant_rows, args.warmup_rows,
                args.security_rounds, say,
            )  # fmt: skip
        ratio = statistics.mean(sasl) / statistics.mean(plain)
        say(f"P3 SASL_SSL cost, {args.instant_rows} rows x {args.security_rounds} rounds on "
            f"{args.security_brokers} broker(s): stored results/s PLAINTEXT "
            f"{' '.join(f'{r:.0f}' for r in plain)}, SASL_SSL "
            f"{' '.join(f'{r:.0f}' for r in sasl)}: mean SASL_SSL/PLAINTEXT "
            f"= {ratio:.3f}")  # fmt: skip
    if "P4" in only:
        rate, p95_ms = p4_sink(args.stored)
        say(f"P4 sink upsert {rate:.0f} rows/s; live metric query p95 {p95_ms:.1f} ms at "
            f"{args.stored} results while ingesting")  # fmt: skip
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
