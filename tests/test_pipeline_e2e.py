"""End to end on the real broker: four workers as OS processes, two generators sharing the
work, the scripted model double as model and judge. Expected rows and metrics are computed
here from the double's published decision rules, independently of the pipeline's SQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from model_double import (
    INVALID_JSON_PERCENT,
    answer_letter,
    judge_rating,
    load_answer_key,
    parse_question,
    question_key,
    stable_hash,
)
from pipeline_harness import DATA_DIR, Pipeline, running_pipeline, wait_until

from perg.dataset import Item, load_dataset, stratified_sample
from perg.protocol import METHODS, SETTINGS, load_protocol

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SAMPLE, SEED = 30, 7


@dataclass(frozen=True)
class Expected:
    answer: str
    parse_fallback: bool
    judge_rating: int | None


def expected_outcomes() -> tuple[dict[int, str], dict[tuple[int, str, str], Expected], list[Item]]:
    """Baseline letter per row and the expected result per (row, setting, method)."""
    protocol = load_protocol("paper", DATA_DIR)
    answer_key = load_answer_key(DATA_DIR / "pergdata.csv")
    items = stratified_sample(load_dataset(DATA_DIR / "pergdata.csv"), SAMPLE, SEED)
    baselines, results = {}, {}
    for item in items:
        parsed = parse_question(protocol.user_prompt(item))
        assert parsed is not None
        key = question_key(*parsed)
        n, gold = len(item.options), answer_key.get(key)
        base = answer_letter(key, n, gold, preferred=False)
        pref = answer_letter(key, n, gold, preferred=True)
        baselines[item.row_id] = base
        for setting in SETTINGS:
            for method in METHODS:
                answer, fallback = pref, False
                if method in ("self_critic", "pref_aligner"):
                    kind = "critic" if method == "self_critic" else "aligner"
                    fallback = stable_hash(f"{kind}|{key}") % 100 < INVALID_JSON_PERCENT
                    if fallback and method == "pref_aligner":
                        answer = base  # the published fallback: the stage-1 text
                rating = None
                if setting != "irrelevant":
                    judge_system = protocol.judge_messages(
                        item, f"The answer is {base}.", f"The answer is {answer}."
                    )[0]["content"]
                    rating = judge_rating(judge_system)
                results[(item.row_id, setting, method)] = Expected(answer, fallback, rating)
    return baselines, results, items


def expected_metrics(
    baselines: dict[int, str], results: dict[tuple[int, str, str], Expected], items: list[Item]
) -> dict[tuple[str, str, str], dict[str, Any]]:
    by_row = {item.row_id: item for item in items}
    metrics = {}
    for setting in SETTINGS:
        for method in METHODS:
            for source in (*sorted({i.source for i in items}), "full"):
                rows = [i.row_id for i in items if source in ("full", i.source)]
                gold = {r: by_row[r].gold_option for r in rows}
                qstar = [r for r in rows if baselines[r] == gold[r]]
                correct = {r for r in rows if results[(r, setting, method)].answer == gold[r]}
                followed = {
                    r for r in rows if (results[(r, setting, method)].judge_rating or 0) >= 3
                }
                nopref = set(qstar)
                union = correct | nopref
                assert qstar, "choose a seed whose sample has a Q* in every source"
                br = 100 * (1 - len(correct & nopref) / len(qstar))
                afr = 100 * (1 - len(followed & nopref) / len(qstar))
                rer = 100 * (1 - len(correct & followed & nopref) / len(qstar))
                metrics[(setting, method, source)] = {
                    "n_rows": len(rows),
                    "n_qstar": len(qstar),
                    "BR": br,
                    "AFR": None if setting == "irrelevant" else afr,
                    "RER": br if setting == "irrelevant" else rer,
                    "PVR": 100 * (1 - len(correct & nopref) / len(union)) if union else 0.0,
                }
    return metrics


def assert_run_matches(pipeline: Pipeline, run_id: str) -> None:
    baselines, results, items = expected_outcomes()
    stored = pipeline.sql(
        "SELECT row_id, setting, method, answer, parse_fallback, judge_rating, judge_outcome, "
        f"extraction FROM results WHERE run_id = '{run_id}' ORDER BY ALL"
    )
    assert len(stored) == len(results) == SAMPLE * 15
    for row in stored:
        want = results[(row["row_id"], row["setting"], row["method"])]
        assert (row["answer"], row["parse_fallback"], row["judge_rating"]) == (
            want.answer, want.parse_fallback, want.judge_rating,
        ), row  # fmt: skip
        assert row["extraction"] == "parsed"
        assert (row["judge_outcome"] == "not_applicable") == (row["setting"] == "irrelevant")
    stored_baselines = pipeline.sql(
        f"SELECT row_id, answer FROM baselines WHERE run_id = '{run_id}' ORDER BY row_id"
    )
    assert {r["row_id"]: r["answer"] for r in stored_baselines} == baselines

    proc = pipeline.perg("score", "--run", run_id, "--json")
    assert proc.returncode == 0, proc.stderr
    scored = {(m["setting"], m["method"], m["source"]): m for m in orjson.loads(proc.stdout)}
    want_metrics = expected_metrics(baselines, results, items)
    assert scored.keys() == want_metrics.keys()
    for key, want in want_metrics.items():
        got = scored[key]
        for name, value in want.items():
            assert got[name] == (None if value is None else pytest.approx(value)), (key, name)


def wait_for_run(pipeline: Pipeline, run_id: str) -> None:
    proc = pipeline.perg("status", run_id, "--wait", "--timeout", "600", timeout=660)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture
def pipeline(kafka_broker: str, tmp_path: Path) -> Iterator[Pipeline]:
    with running_pipeline(kafka_broker, tmp_path, f"e2e-{uuid.uuid4().hex[:8]}") as running:
        yield running


def test_stratified_run_gives_the_scripted_rows_and_metrics(pipeline: Pipeline) -> None:
    run_id = pipeline.submit("--sample", str(SAMPLE), "--seed", str(SEED))
    wait_for_run(pipeline, run_id)
    assert_run_matches(pipeline, run_id)
    shared = pipeline.sql(
        f"SELECT count(DISTINCT method) AS n FROM results WHERE run_id = '{run_id}'"
    )
    assert shared == [{"n": 5}]


def test_sigkilled_workers_restart_without_duplicates(pipeline: Pipeline) -> None:
    run_id = pipeline.submit("--sample", str(SAMPLE), "--seed", str(SEED))
    wait_until(
        lambda: (pipeline.status(run_id) or {}).get("results_stored", 0) > 0,
        "the first stored results",
    )
    pipeline.workers.kill("generator-0")
    pipeline.workers.kill("sink-0")
    pipeline.workers.start("generator", 0)
    pipeline.workers.start("sink", 0)
    pipeline.wait_for_sink()
    wait_for_run(pipeline, run_id)
    assert_run_matches(pipeline, run_id)
    duplicates = pipeline.sql(
        "SELECT count(*) - count(DISTINCT (run_id, row_id, setting, method)) AS extra "
        f"FROM results WHERE run_id = '{run_id}'"
    )
    assert duplicates == [{"extra": 0}]


INPUT_TOPICS = ("runs", "work", "align", "generations", "verdicts")


async def _publish_malformed(bootstrap: str, prefix: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for topic in INPUT_TOPICS:
            await producer.send_and_wait(f"{prefix}.{topic}", b"{not json", key=b"bad:0")
            wrong_shape = orjson.dumps({"schema": "perg.work_item", "version": 1, "row": 3})
            await producer.send_and_wait(f"{prefix}.{topic}", wrong_shape, key=b"bad:1")
    finally:
        await producer.stop()


def test_malformed_messages_are_dead_lettered_and_the_run_finishes(pipeline: Pipeline) -> None:
    run_id = pipeline.submit("--sample", "6", "--seed", "3", "--methods", "zero_shot,self_critic")
    asyncio.run(_publish_malformed(pipeline.bootstrap, pipeline.prefix))
    wait_for_run(pipeline, run_id)

    def dead_letters() -> list[dict[str, Any]]:
        return pipeline.sql("SELECT topic, service, reason FROM dead_letters ORDER BY ALL")

    letters = wait_until(lambda: len(dead_letters()) >= 2 * len(INPUT_TOPICS) and dead_letters(),
                         "dead letters of every input topic")  # fmt: skip
    topics = {letter["topic"].removeprefix(pipeline.prefix + ".") for letter in letters}
    assert topics == set(INPUT_TOPICS)
    for letter in letters:
        assert letter["reason"].startswith("invalid perg."), letter
    status = pipeline.status(run_id)
    assert status is not None and status["done"]
    assert status["dead_letters"] == 0  # the malformed messages belong to no run


def test_submit_rejects_bad_input_with_a_clear_error(pipeline: Pipeline) -> None:
    proc = pipeline.perg(
        "submit", "--model-url", "http://x/v1", "--model", "m", "--judge-url", "http://x/v1",
        "--judge-model", "m", "--rows", "0-5,99999",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "99999" in proc.stderr
    assert proc.stdout == ""


def test_gate_flags_a_known_regression_and_passes_noise(pipeline: Pipeline) -> None:
    """Three runs of the same rows through the pipeline: the default double as baseline, a
    double breaking 70% instead of 20% of its preferred answers, and one that only reshuffles
    which rows break (same rates: noise). The judge is the default double for all three."""
    worse_url = pipeline.start_double("--pref-wrong-percent", "70")
    noise_url = pipeline.start_double("--salt", "reshuffled")
    rows = ("--sample", "60", "--seed", "11", "--methods", "zero_shot,cot")
    baseline = pipeline.submit(*rows)
    worse = pipeline.submit(*rows, model_url=worse_url)
    noise = pipeline.submit(*rows, model_url=noise_url)
    for run_id in (baseline, worse, noise):
        wait_for_run(pipeline, run_id)

    flagged = pipeline.perg("gate", baseline, worse, "--max-rer-increase", "1.0", "--json")
    assert flagged.returncode == 1, flagged.stdout[-2000:] + flagged.stderr
    passed = pipeline.perg("gate", baseline, noise, "--max-rer-increase", "1.0")
    assert passed.returncode == 0, passed.stdout[-3000:] + passed.stderr
    assert "McNemar" in passed.stdout
    unknown = pipeline.perg("gate", baseline, "no-such-run")
    assert unknown.returncode == 2
