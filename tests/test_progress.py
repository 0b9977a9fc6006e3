"""A run's progress off a terminal: one line per update, with about how long the rest takes
once a few steps are done while watching."""

from __future__ import annotations

from typing import Any

from perg.progress import MIN_STEPS_FOR_ESTIMATE, RunProgress, progress_line


def status(stored: int, *, expected: int = 60, done: bool = False) -> dict[str, Any]:
    return {
        "model": "m",
        "protocol": "paper",
        "generated": stored,
        "expected_generations": expected,
        "aligned": 0,
        "expected_aligned": 0,
        "results_stored": stored,
        "expected_results": expected,
        "retries": 0,
        "dead_letters": 0,
        "done": done,
    }


def test_no_estimate_before_a_few_steps_are_done_while_watching() -> None:
    progress = RunProgress("r")
    progress.update(status(10))  # done before watching: no rate yet
    progress.update(status(12))  # 2 generations and 2 stored results since
    assert MIN_STEPS_FOR_ESTIMATE > 4
    assert progress.left_s is None
    assert progress_line("r", status(12), progress.left_s).endswith("dead letters 0")


def test_the_time_left_is_the_rest_at_the_rate_seen() -> None:
    progress = RunProgress("r")
    progress.update(status(0))
    progress.started -= 100  # 100 s of watching
    progress.update(status(20))  # 40 of 120 steps in 100 s: 80 more take ~200 s
    assert progress.left_s is not None and 195 < progress.left_s < 205
    line = progress_line("r", status(20), progress.left_s)
    assert line.endswith("dead letters 0 · ~3 min left")
    assert "~3 min left" in progress.footer
    progress.update(status(58))
    assert progress_line("r", status(58), progress.left_s).endswith(" s left")


def test_a_finished_run_has_no_estimate() -> None:
    progress = RunProgress("r")
    progress.update(status(0))
    progress.started -= 10
    progress.update(status(60, done=True))
    assert progress.left_s is None
    assert progress_line("r", status(60, done=True), None).endswith(" · done")


def test_a_cancelled_run_has_no_estimate() -> None:
    progress = RunProgress("r")
    progress.update(status(0))
    progress.started -= 10
    progress.update({**status(20), "state": "cancelled"})
    assert progress.left_s is None


def test_the_estimate_counts_every_stage_not_only_stored_results() -> None:
    progress = RunProgress("r")
    progress.update(status(0))
    progress.started -= 100
    # 30 generations in 100 s, nothing stored yet (the pipeline is filling): 90 steps left
    progress.update({**status(0), "generated": 30})
    assert progress.left_s is not None and 295 < progress.left_s < 305
