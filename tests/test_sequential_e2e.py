"""The sequential gate on the real pipeline (issue 17): Kafka, the four workers as OS
processes, the scripted model double (tests/pipeline_harness.py). A candidate whose double
breaks 15 more points of its preference-conditioned answers (--pref-wrong-percent) fails
and is cancelled before half of its 600 rows are generated; an unchanged one passes early
and is accepted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from model_double import WRONG_PERCENT
from pipeline_harness import Pipeline, running_pipeline, wait_until
from test_lineage_e2e import MAX_IN_FLIGHT, MODEL_WORKERS, finished_everything, received

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROWS = ("--sample", "600", "--seed", "7", "--methods", "zero_shot", "--lineage", "chat-prod")
GATE = ("--sequential", "--max-br-increase", "1", "--json")


@pytest.fixture
def pipeline(kafka_broker: str, tmp_path: Path) -> Iterator[Pipeline]:
    with running_pipeline(
        kafka_broker, tmp_path, f"seq-{uuid.uuid4().hex[:8]}", model_max_in_flight=MAX_IN_FLIGHT
    ) as running:
        yield running


def test_sequential_gate_fails_a_regression_early_and_passes_no_change(
    pipeline: Pipeline,
) -> None:
    reference = pipeline.submit(*ROWS, "--version", "v1")
    proc = pipeline.perg("status", reference, "--wait", "--timeout", "600", timeout=630)
    assert proc.returncode == 0, proc.stderr
    assert pipeline.perg("accept", reference).returncode == 0

    # a 15-point BR regression, served slowly enough that the gate can stop it in time
    broken = pipeline.start_double("--pref-wrong-percent", str(WRONG_PERCENT + 15),
                                   "--slots", "4", "--service-s", "0.05")  # fmt: skip
    bad = pipeline.submit(*ROWS, "--version", "v2", model_url=broken)
    gate = pipeline.perg("gate", "--lineage", "chat-prod", bad, *GATE, timeout=600)
    assert gate.returncode == 1, gate.stdout[-2000:] + gate.stderr
    at_cancel = received(broken)
    assert "sequential gate: FAIL settled early" in gate.stdout
    wait_until(lambda: finished_everything(pipeline), "the run's messages finished", 180, 0.5)
    new_calls = received(broken) - at_cancel
    assert new_calls <= MAX_IN_FLIGHT * MODEL_WORKERS, new_calls
    (state,) = pipeline.sql(
        f"SELECT state, n_rows, baselines_stored FROM run_states WHERE run_id = '{bad}'"
    )
    assert state["state"] == "cancelled" and state["baselines_stored"] < state["n_rows"] / 2
    print(f"regressed candidate: decided and cancelled at {state['baselines_stored']} of "
          f"{state['n_rows']} rows; {new_calls} model calls after the cancel")  # fmt: skip

    same = pipeline.submit(*ROWS, "--version", "v3")
    gate = pipeline.perg("gate", "--lineage", "chat-prod", same, *GATE, "--accept-on-pass",
                         timeout=600)  # fmt: skip
    assert gate.returncode == 0, gate.stdout[-2000:] + gate.stderr
    assert f"accepted {same} in lineage chat-prod" in gate.stderr
    latest = pipeline.sql(
        "SELECT run_id FROM acceptances WHERE lineage = 'chat-prod' ORDER BY accepted_at DESC "
        "LIMIT 1"
    )
    assert latest == [{"run_id": same}]
