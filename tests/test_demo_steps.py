"""``perg demo`` says what each step longer than a few seconds is doing and about how long it
takes, off a terminal too: the step functions run here with their output captured in a file
(as in a CI log or a pipe), on a real broker and real workers."""

from __future__ import annotations

import io
import os
import re
from contextlib import ExitStack
from pathlib import Path

import pytest
from rich.console import Console

from perg.demo import (
    KAFKA_START,
    WORKERS_START,
    Step,
    evaluation_estimate,
    start_kafka,
    start_workers,
)
from perg.local import deploy_script, free_port


def captured() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=80), out


def test_a_step_says_what_it_does_how_long_it_should_take_and_how_long_it_took() -> None:
    console, out = captured()
    step = Step(console, "Starting the thing [with brackets]", "~5 s")
    step.done("The thing started at http://127.0.0.1:1/v1")
    lines = out.getvalue().splitlines()
    assert lines[0] == "Starting the thing [with brackets] (~5 s)..."  # no markup eaten
    assert re.fullmatch(r"The thing started at http://127\.0\.0\.1:1/v1 \(\d+ s\)", lines[1])
    assert not console.is_terminal


def test_a_deploy_scripts_escape_sequences_are_shown_not_sent_to_the_terminal() -> None:
    console, out = captured()
    Step(console, "Fetching\x1b[0m the jars\x1b]0;title\x07", "~60 s")
    assert out.getvalue() == "Fetching\\x1b[0m the jars\\x1b]0;title\\x07 (~60 s)...\n"


@pytest.mark.kafka
def test_fetching_the_kafka_jars_logs_no_escape_sequences(tmp_path: Path) -> None:
    """Debian's Maven writes colour resets even with -B; kafka.sh drops them."""
    env = {**os.environ, "PERG_HOME": str(tmp_path / "home")}
    lines: list[str] = []
    deploy_script("kafka.sh", "fetch", env=env, progress=lines.append)
    assert lines and lines[0].startswith("kafka.sh: fetching Kafka")
    assert not [line for line in lines if "\x1b" in line or not line.strip()]


def test_the_evaluation_estimate_scales_with_the_results() -> None:
    assert evaluation_estimate(60).startswith("60 results: ~")
    small, large = evaluation_estimate(2), evaluation_estimate(450)
    assert "~1 min" in small
    assert int(re.search(r"~(\d+) min", large)[1]) > 10  # type: ignore[index]


@pytest.mark.kafka
def test_starting_kafka_and_the_services_is_said_off_a_terminal(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERG_") or k == "PERG_HOME"}
    env["PERG_KAFKA_DIR"] = str(tmp_path / "kafka")
    console, out = captured()
    with ExitStack() as stack:
        bootstrap = start_kafka(stack, env, console)
        port = free_port()
        env.update(
            PERG_KAFKA=bootstrap,
            PERG_DB=str(tmp_path / "perg.duckdb"),
            PERG_SINK_PORT=str(port),
            PERG_SINK_URL=f"http://127.0.0.1:{port}",
            PERG_TOPIC_PREFIX="perg-steps",
        )
        start_workers(stack, env, console, tmp_path / "logs", env["PERG_SINK_URL"])
    text = out.getvalue()
    assert f"Starting Kafka ({KAFKA_START})..." in text
    assert re.search(rf"Kafka started at {re.escape(bootstrap)} \(\d+ s\)", text), text
    assert f"Starting generator, aligner, judge and sink ({WORKERS_START})..." in text
    assert re.search(r"The services are running \(logs in .*\) \(\d+ s\)", text), text
    # everything the steps started is stopped again
    kafka = deploy_script("kafka.sh", "status", env=env, check=False)
    assert kafka == ""
