"""docs/operators.md followed on a three-broker SASL_SSL cluster (``deploy/kafka.sh start
--brokers 3 --secure``): two processes of each consuming service (generator, aligner, judge),
each ``perg worker SERVICE --instance NAME`` with a name of its own, and the one sink the guide
allows; ``perg submit`` run as the guide says (``set -a; . client.env; set +a``). The run's
every result is stored exactly once, as the scripted double's rules say; both processes of
each scaled service did work (their /metrics); the model server never saw more calls at once
than the sum of the callers' ``--max-in-flight``; lag and in-flight are back to zero; the
topics have three replicas, min ISR 2."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from kafka_fixture import SecureKafka, secure_kafka
from pipeline_harness import ROOT, Pipeline, stopped_at_exit, wait_until
from test_ops_metrics import double_stats, ready_status, scrape_when_settled, total
from test_pipeline_e2e import SAMPLE, SEED, assert_run_matches, wait_for_run

from perg.config import load_settings
from perg.kafka import admin_client
from schemas import ALL_TOPICS
from schemas.topics import ALIGN, GENERATIONS, WORK

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SCALED = {"generator": WORK, "aligner": ALIGN, "judge": GENERATIONS}  # service: its input
MAX_IN_FLIGHT = 4  # model calls on the wire per process and endpoint


@pytest.fixture(scope="module")
def cluster() -> Iterator[SecureKafka]:
    with secure_kafka(brokers=3) as kafka:
        yield kafka


def submit_as_the_guide_says(pipeline: Pipeline, env_file: Path) -> str:
    """``set -a; . "$PERG_KAFKA_DIR/client.env"; set +a`` then ``perg submit``."""
    url = pipeline.model_url
    proc = subprocess.run(
        ["bash", "-c", 'set -a; . "$1"; set +a; shift; exec "$@"', "guide", str(env_file),
         sys.executable, "-m", "perg", "submit", "--model-url", url, "--model", "scripted-double",
         "--judge-url", url, "--judge-model", "scripted-double",
         "--sample", str(SAMPLE), "--seed", str(SEED)],
        env={k: v for k, v in pipeline.env.items() if not k.startswith("PERG_KAFKA")},
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


async def topic_layouts(pipeline: Pipeline) -> dict[str, tuple[set[int], set[int], str]]:
    """Each PERG topic's replica counts and ISR sizes over its partitions, and its
    min.insync.replicas."""
    settings = load_settings(pipeline.env)
    names = [spec.name(pipeline.prefix) for spec in ALL_TOPICS]
    async with admin_client(settings) as admin:
        topics = await admin.describe_topics(names)
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    min_isr = {
        resource[3]: value
        for response in configs
        for resource in response.resources
        for key, value, *_ in resource[4]
        if key == "min.insync.replicas"
    }
    return {
        t["topic"]: ({len(p["replicas"]) for p in t["partitions"]},
                     {len(p["isr"]) for p in t["partitions"]}, min_isr[t["topic"]])
        for t in topics
    }  # fmt: skip


def test_two_processes_per_service_on_three_brokers_over_sasl_ssl(
    cluster: SecureKafka, tmp_path: Path
) -> None:
    pipeline = Pipeline(
        cluster.plaintext,
        tmp_path,
        f"ops-{uuid.uuid4().hex[:8]}",
        metrics=True,
        model_max_in_flight=MAX_IN_FLIGHT,
        kafka_security=cluster.sasl_ssl,
    )
    assert pipeline.env["PERG_KAFKA"] == cluster.sasl_ssl["PERG_KAFKA"]  # the SASL_SSL listener
    workers = pipeline.workers
    with stopped_at_exit(pipeline):
        pipeline.model_url = pipeline.start_double("--slots", "8", "--service-s", "0.02")
        workers.start("sink")  # one sink writes the results file
        for service in SCALED:
            workers.start(service, 0)
            workers.start(service, 1)
        urls = {name: workers.metrics_url(name) for name in workers.procs}
        wait_until(lambda: all(ready_status(u) == 200 for u in urls.values()), "all ready", 180)
        pipeline.wait_for_sink()

        run_id = submit_as_the_guide_says(pipeline, cluster.state_dir / "client.env")
        wait_for_run(pipeline, run_id)
        assert_run_matches(pipeline, run_id)
        stored = pipeline.sql(
            "SELECT (SELECT count(*) FROM results) + (SELECT count(*) FROM baselines) AS n"
        )[0]["n"]

        scraped = scrape_when_settled(urls)
        layouts = asyncio.run(topic_layouts(pipeline))
        peak = double_stats(pipeline.model_url)["peak_open"]

    for service, topic in SCALED.items():
        source = topic.name(pipeline.prefix)
        for name in (f"{service}-0", f"{service}-1"):
            finished = total(scraped[name], "perg_messages_finished_total", topic=source)
            assert finished > 0, f"{name} did no work"
    # stored exactly once: every verdict the sink wrote is one row of the results file
    assert total(scraped["sink-0"], "perg_sink_rows_written_total", table="verdicts") == stored
    assert stored == SAMPLE * 15 + SAMPLE
    callers = 2 * len(SCALED)
    assert MAX_IN_FLIGHT < peak <= callers * MAX_IN_FLIGHT
    assert set(layouts) == {spec.name(pipeline.prefix) for spec in ALL_TOPICS}
    assert all(layout == ({3}, {3}, "2") for layout in layouts.values()), layouts
