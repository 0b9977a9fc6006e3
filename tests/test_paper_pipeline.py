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


def test_inst_layout_runs_end_to_end_on_the_completions_endpoint(pipeline: Pipeline) -> None:
    """Janus's raw [INST] prompt (--layout inst) against the double's /v1/completions: paper
    sends the published Pref-Aligner prompt (the message list as the template's argument), which
    holds no readable question, so every aligner reply falls back to the baseline; strict sends
    the fixed prompt and reads the rewrite."""
    rows = 4
    janus = ("--sample", str(rows), "--seed", "3", "--settings", "relevant",
             "--methods", "zero_shot,self_critic,pref_aligner", "--layout", "inst",
             "--decoding-profile", "janus")  # fmt: skip
    runs = {p: pipeline.submit(*janus, "--protocol", p) for p in ("paper", "strict")}
    for run_id in runs.values():
        proc = pipeline.perg("status", run_id, "--wait", "--timeout", "600", timeout=660)
        assert proc.returncode == 0, proc.stderr[-2000:]
    for protocol, run_id in runs.items():
        (run,) = pipeline.sql(
            "SELECT decoding_profile, spec->>'$.context.layout' AS layout FROM runs "
            f"WHERE run_id = '{run_id}'"
        )
        assert run == {"decoding_profile": "janus", "layout": "inst"}
        rows_stored = pipeline.sql(
            "SELECT method, answer, response, parse_fallback, rewrite_read FROM results "
            f"WHERE run_id = '{run_id}' ORDER BY row_id, method"
        )
        assert len(rows_stored) == rows * 3
        for row in rows_stored:
            if row["method"] == "zero_shot":
                assert row["answer"] is not None and row["rewrite_read"] is None
        aligned = [r for r in rows_stored if r["method"] == "pref_aligner"]
        if protocol == "paper":
            assert all(r["parse_fallback"] and r["rewrite_read"] == "unreadable" for r in aligned)
        else:
            assert any(r["rewrite_read"] == "json" for r in aligned)
            assert not any(r["parse_fallback"] for r in aligned)


def test_thinking_is_switched_and_stored_apart(pipeline: Pipeline) -> None:
    """--thinking on for a Qwen3 model name: the double thinks when the chat template is told
    to; the answer is read after </think> and the thinking stored in its own column; the
    aligner's stage 2 is sent with thinking off."""
    run_id = pipeline.submit(
        "--model", "Qwen/Qwen3-8B", "--thinking", "on", "--sample", "3", "--seed", "4",
        "--settings", "relevant", "--methods", "zero_shot,pref_aligner",
    )  # fmt: skip
    proc = pipeline.perg("status", run_id, "--wait", "--timeout", "600", timeout=660)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = pipeline.sql(
        "SELECT decoding_profile, spec->>'$.context.layout' AS layout, "
        f"spec->>'$.context.decoding.thinking' AS thinking FROM runs WHERE run_id = '{run_id}'"
    )
    assert run == {"decoding_profile": "qwen3", "layout": "merged", "thinking": "true"}
    thought = "<think>\nscripted thinking\n</think>"
    rows = pipeline.sql(
        f"SELECT method, response, thinking, answer FROM results WHERE run_id = '{run_id}'"
    )
    assert len(rows) == 6
    for row in rows:
        assert "</think>" not in row["response"] and row["answer"] is not None
        assert row["thinking"] == (thought if row["method"] == "zero_shot" else None)
    baselines = pipeline.sql(f"SELECT thinking FROM baselines WHERE run_id = '{run_id}'")
    assert baselines == [{"thinking": thought}] * 3
