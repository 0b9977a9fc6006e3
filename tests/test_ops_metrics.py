"""Operators' metrics, scraped from the workers during a pipeline run on the real broker: at the
end every counter equals what was stored (and what the model double counted), lag and in-flight
are back to zero; /ready answers 200 only once a worker consumes (the sink: once its results
file is open). A run naming a host off the workers' allow-list is dead-lettered, no call made."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest
from pipeline_harness import DATA_DIR, Pipeline, wait_until
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from perg.local import free_port
from schemas.topics import GENERATIONS, WORK

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROWS = 12  # the counted run
REFUSED_ROWS = 5  # the run naming a host off the allow-list


def scrape(base_url: str) -> list[Sample]:
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def scrape_when_settled(urls: dict[str, str]) -> dict[str, list[Sample]]:
    """Every process's samples, scraped once none has a message in flight or a committed
    offset behind the log end (the counters are final then)."""

    def settled() -> dict[str, list[Sample]] | None:
        scraped = {name: scrape(url) for name, url in urls.items()}
        idle = all(
            total(s, "perg_messages_in_flight") == 0
            and all(x.value == 0 for x in s if x.name == "perg_committed_offset_lag")
            for s in scraped.values()
        )
        return scraped if idle else None

    found: dict[str, list[Sample]] = wait_until(settled, "lag and in-flight back to zero")
    return found


def ready_status(base_url: str) -> int | None:
    try:
        with urllib.request.urlopen(base_url + "/ready", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def double_stats(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=10) as response:
        stats: dict[str, float] = orjson.loads(response.read())
    return stats


def test_counters_equal_the_stored_counts(
    kafka_broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # workers may call 127.0.0.1 (the double) but not "localhost" (the same double, refused)
    monkeypatch.setenv("PERG_MODEL_HOSTS", "127.0.0.1")
    pipeline = Pipeline(kafka_broker, tmp_path, f"obs-{uuid.uuid4().hex[:8]}", metrics=True)
    prefix = pipeline.prefix
    try:
        pipeline.model_url = pipeline.start_double("--fault-percent", "5", "--faults", "503,429")
        pipeline.workers.start_all(generators=pipeline.generators)
        urls = {name: pipeline.workers.metrics_url(name) for name in pipeline.workers.procs}
        wait_until(lambda: all(ready_status(u) == 200 for u in urls.values()), "all ready")
        pipeline.wait_for_sink()

        run_id = pipeline.submit("--sample", str(ROWS), "--seed", "3")
        done = pipeline.perg("status", run_id, "--wait", "--timeout", "600", timeout=660)
        assert done.returncode == 0, done.stderr[-2000:]
        served = double_stats(pipeline.model_url)

        port = pipeline.model_url.removesuffix("/v1").rsplit(":", 1)[1]
        refused_url = f"http://localhost:{port}/v1"
        proc = pipeline.perg(
            "submit", "--model-url", refused_url, "--model", "m", "--judge-url",
            pipeline.model_url, "--judge-model", "m", "--sample", str(REFUSED_ROWS),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "warning: --model-url: model host localhost:" in proc.stderr
        refused_id = proc.stdout.strip()
        sql_calls = 0

        def refused_letters() -> list[dict[str, object]] | None:
            nonlocal sql_calls
            sql_calls += 1
            query = f"SELECT service, reason FROM dead_letters WHERE run_id = '{refused_id}'"
            letters = pipeline.sql(query)
            return letters if len(letters) == REFUSED_ROWS else None

        letters = wait_until(refused_letters, "the refused run's dead letters")
        assert {letter["service"] for letter in letters} == {"generator"}
        assert all("PERG_MODEL_HOSTS allows 127.0.0.1" in str(x["reason"]) for x in letters)
        assert double_stats(pipeline.model_url) == served  # no call made

        counts = pipeline.sql(
            "SELECT (SELECT count(*) FROM results) + (SELECT count(*) FROM baselines) AS verdicts,"
            " (SELECT count(*) FROM dead_letters) AS letters, (SELECT count(*) FROM runs) AS runs"
        )[0]
        sql_calls += 1

        scraped = scrape_when_settled(urls)
    finally:
        pipeline.stop()

    everything = [sample for samples in scraped.values() for sample in samples]
    generators = [s for name, samples in scraped.items() if name.startswith("generator")
                  for s in samples]  # fmt: skip
    judge, sink = scraped["judge-0"], scraped["sink-0"]
    work, generations = WORK.name(prefix), GENERATIONS.name(prefix)
    rows = ROWS + REFUSED_ROWS
    assert total(generators, "perg_messages_consumed_total", topic=work) == rows
    assert total(generators, "perg_messages_finished_total", topic=work) == rows
    assert total(generators, "perg_messages_dead_lettered_total", topic=work) == REFUSED_ROWS
    assert total(everything, "perg_messages_dead_lettered_total") == counts["letters"]
    assert total(everything, "perg_messages_retried_total") == 0
    assert total(judge, "perg_messages_finished_total", topic=generations) == counts["verdicts"]
    assert total(sink, "perg_sink_rows_written_total", table="verdicts") == counts["verdicts"]
    assert total(sink, "perg_sink_rows_written_total", table="dead_letters") == counts["letters"]
    assert total(sink, "perg_sink_rows_written_total", table="runs") == counts["runs"] == 2
    assert total(sink, "perg_sink_rows_written_total", table="progress") == total(
        judge, "perg_messages_consumed_total", topic=generations
    )
    assert total(sink, "perg_sink_write_seconds_count", table="verdicts") >= 1
    assert total(sink, "perg_live_query_seconds_count") == sql_calls
    # the model calls, against the double's own counts
    faults_503, faults_429 = served.get("fault_503", 0), served.get("fault_429", 0)
    assert total(everything, "perg_model_calls_total", outcome="ok") == served["calls"]
    assert total(everything, "perg_model_calls_total", outcome="failed") == 0
    assert total(everything, "perg_model_call_seconds_count") == served["calls"]
    assert total(everything, "perg_model_http_errors_total", status="503") == faults_503
    assert total(everything, "perg_model_http_errors_total", status="429") == faults_429
    assert total(everything, "perg_model_retries_total") == faults_503 + faults_429
    assert faults_503 + faults_429 > 0  # the faults were there to count
    endpoints = {s.labels["endpoint"] for s in everything if s.name == "perg_model_calls_total"}
    assert endpoints == {f"127.0.0.1:{port}"}


def test_the_sink_is_ready_only_once_its_store_is_open(kafka_broker: str, tmp_path: Path) -> None:
    """Another process holds the results file's write lock: the sink serves its metrics but is
    not ready; once the lock is released it opens the file and becomes ready."""
    db = tmp_path / "perg.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, pathlib; from services.sink.store import ResultStore; "
         "s = ResultStore(pathlib.Path(sys.argv[1])); "
         "print('held', flush=True); sys.stdin.read()", str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    port = free_port()
    env = {"PERG_KAFKA": kafka_broker, "PERG_TOPIC_PREFIX": f"ready-{uuid.uuid4().hex[:8]}",
           "PERG_DB": str(db), "PERG_SINK_PORT": str(free_port()), "PERG_METRICS_PORT": str(port),
           "PERG_DATA_DIR": str(DATA_DIR)}  # fmt: skip
    sink = subprocess.Popen(
        [sys.executable, "-m", "perg", "worker", "sink"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "sink.log").open("wb"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: ready_status(url) is not None, "the sink's metrics endpoint")
        wait_until(
            lambda: "waiting for the write lock" in (tmp_path / "sink.log").read_text(),
            "the sink waiting for the lock",
        )
        assert ready_status(url) == 503
        assert scrape(url)  # metrics are served meanwhile
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        wait_until(lambda: ready_status(url) == 200, "the sink ready")
    finally:
        sink.terminate()
        sink.wait(timeout=60)
        holder.kill()
        holder.wait()
