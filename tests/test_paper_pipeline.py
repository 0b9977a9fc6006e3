"""End to end on the real broker: a paper run with the LLM extractor and a noise floor.

The scripted model double answers "The answer is X." and, as the paper's LLM extractor, replies
``{'answer': 'X'}`` (a Python dict, read with ast.literal_eval); it is deterministic, so its
noise floor is 0 and the rules parser agrees with the LLM extractor on every answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from pipeline_harness import Pipeline, running_pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROWS, SETTINGS, METHODS = 6, ("relevant", "irrelevant"), ("zero_shot", "self_critic")


@pytest.fixture
def pipeline(kafka_broker: str, tmp_path: Path) -> Iterator[Pipeline]:
    with running_pipeline(kafka_broker, tmp_path, f"paper-{uuid.uuid4().hex[:8]}") as running:
        yield running


def test_paper_run_records_extractor_profile_and_noise_floor(pipeline: Pipeline) -> None:
    run_id = pipeline.submit(
        "--sample", str(ROWS), "--seed", "5", "--settings", ",".join(SETTINGS),
        "--methods", ",".join(METHODS), "--extractor", "llm", "--repeat-baseline",
    )  # fmt: skip
    proc = pipeline.perg("status", run_id, "--wait", "--timeout", "600", timeout=660)
    assert proc.returncode == 0, proc.stderr[-2000:]

    (run,) = pipeline.sql(
        "SELECT decoding_profile, extractor, followed_threshold, "
        f"spec->>'$.context.repeat_baseline' AS repeat FROM runs WHERE run_id = '{run_id}'"
    )
    assert run == {"decoding_profile": "hf", "extractor": "llm", "followed_threshold": 3,
                   "repeat": "true"}  # fmt: skip
    rows = pipeline.sql(
        f"SELECT extractor, extraction, answer, rules_answer FROM results WHERE run_id = '{run_id}'"
    )
    assert len(rows) == ROWS * len(SETTINGS) * len(METHODS)
    assert all(r["extractor"] == "llm" and r["extraction"] == "llm" for r in rows)
    assert all(r["answer"] == r["rules_answer"] is not None for r in rows)
    repeats = pipeline.sql(
        f"SELECT r.answer = b.answer AS same FROM baseline_repeats r JOIN baselines b "
        f"USING (run_id, row_id) WHERE run_id = '{run_id}'"
    )
    assert repeats == [{"same": True}] * ROWS

    proc = pipeline.perg("score", "--run", run_id, "--json")
    assert proc.returncode == 0, proc.stderr
    for metric in orjson.loads(proc.stdout):
        assert metric["n_noise_qstar"] == metric["n_qstar"]
        assert metric["noise_BR"] == (0.0 if metric["n_qstar"] else None)
    proc = pipeline.perg("score", "--run", run_id)
    assert proc.returncode == 0, proc.stderr
    answers = ROWS * len(SETTINGS) * len(METHODS) + ROWS
    assert f"rules vs llm disagree on 0 of {answers} answers" in proc.stdout
