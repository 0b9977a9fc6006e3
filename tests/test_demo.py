"""The README's main command: its report (offline) and a real run on the embedded model
(SmolLM2-135M on llama.cpp's llama-server, CPU).

The end-to-end test installs llama-server on first use (deploy/llama-server.sh install: the
prebuilt xllamacpp wheel, ~30 s) and reuses it afterwards. A small sample keeps the CPU run
short."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import orjson
import pytest

from perg.cli import build_parser
from perg.demo import DEFAULT_METHODS, DEFAULT_SETTINGS
from perg.demo_report import (
    JudgeParse,
    format_table,
    headline,
    judge_parse_line,
    judge_warning,
    pooled,
    qstar_warning,
)
from perg.judging import RATING_SCHEMA, parse_rating
from perg.protocol import METHODS, SETTINGS

ROOT = Path(__file__).resolve().parent.parent
PAPER_RULE = re.compile(r"<answer>(\d+)</answer>")


def metric_row(
    setting: str, method: str, source: str = "full", **values: object
) -> dict[str, object]:
    row: dict[str, object] = {"run_id": "r" * 42, "setting": setting, "method": method}
    row.update(source=source, n_rows=40, n_qstar=12, PVR=20.0)
    for metric in ("BR", "AFR", "RER"):
        row.update({metric: None, f"{metric}_lo": None, f"{metric}_hi": None})
    row.update(values)
    return row


ZERO = metric_row("relevant", "zero_shot", BR=50.0, BR_lo=25.4, BR_hi=74.6, AFR=25.0, AFR_lo=8.9,
                  AFR_hi=53.2, RER=58.3, RER_lo=32.0, RER_hi=80.7)  # fmt: skip
ALIGNER = metric_row("relevant", "pref_aligner", BR=0.0, BR_lo=0.0, BR_hi=24.2, AFR=0.0,
                     AFR_lo=0.0, AFR_hi=24.2, RER=0.0, RER_lo=0.0, RER_hi=24.2)  # fmt: skip


def test_constrained_rating_replies_parse_by_the_paper_rule_and_ours() -> None:
    values = RATING_SCHEMA["enum"]
    assert isinstance(values, list) and len(values) == 5
    for n, value in enumerate(values, start=1):
        reply = orjson.dumps(value).decode()  # what a JSON-schema constrained server returns
        first = PAPER_RULE.search(reply)
        assert first is not None and int(first[1]) == n
        assert parse_rating(reply) == n


def test_table_is_pooled_compact_and_readable() -> None:
    rows = [
        ZERO,
        ALIGNER,
        metric_row("relevant", "zero_shot", source="cais/mmlu", BR=1.0, BR_lo=0.1, BR_hi=9.9),
    ]
    table = format_table(pooled(rows))
    lines = table.splitlines()
    assert len(lines) == 3  # header + one line per setting x method, no per-source rows
    assert "r" * 42 not in table  # no run id per row
    assert lines[0].split()[:4] == ["setting", "method", "rows", "|Q*|"]
    assert "zero-shot" in lines[1] and "50 [25-75]" in lines[1] and "58 [32-81]" in lines[1]
    assert "Pref-Aligner" in lines[2] and "0 [0-24]" in lines[2]
    assert all(len(line) <= 100 for line in lines)
    by_source = format_table([rows[2]], key="source")
    assert "cais/mmlu" in by_source and "source" in by_source.splitlines()[0]
    assert "-" in by_source.splitlines()[1].split()  # an undefined metric reads "-"


def test_headline_says_what_pref_aligner_changed_and_whether_intervals_overlap() -> None:
    words = headline([ZERO, ALIGNER])
    assert words is not None
    assert "on the 12 questions" in words
    assert "BR from 50% to 0% (95% intervals do not overlap)" in words
    assert "RER from 58% to 0% (95% intervals do not overlap)" in words
    close = {**ALIGNER, "RER": 50.0, "RER_lo": 25.0, "RER_hi": 75.0}
    assert "RER from 58% to 50% (95% intervals overlap)" in (headline([ZERO, close]) or "")
    assert headline([ZERO]) is None  # nothing to compare
    assert headline([metric_row("relevant", "zero_shot"), ALIGNER]) is None  # empty Q*


def test_qstar_warnings() -> None:
    assert qstar_warning([ZERO, ALIGNER]) is None
    assert "only 3 question" in (qstar_warning([{**ZERO, "n_qstar": 3}]) or "")
    assert "Q* is empty" in (qstar_warning([{**ZERO, "n_qstar": 0}]) or "")
    assert "No results" in (qstar_warning([]) or "")


def test_judge_parse_line() -> None:
    line = judge_parse_line(JudgeParse(asked=80, rated=78), constrained=True)
    assert "98%" in line and "78 of 80" in line and "<answer>N</answer>" in line
    assert "no rating" in judge_parse_line(JudgeParse(0, 0), constrained=False)


def test_cli_defaults_and_whole_grid() -> None:
    parser = build_parser()
    args = parser.parse_args(["demo"])
    assert (args.settings, args.methods, args.all) == (DEFAULT_SETTINGS, DEFAULT_METHODS, False)
    assert DEFAULT_SETTINGS == ("relevant",) and DEFAULT_METHODS == ("zero_shot", "pref_aligner")
    assert parser.parse_args(["demo", "--all"]).all
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--all", "--settings", "mixed"])
    assert set(SETTINGS) == {"relevant", "mixed", "irrelevant"} and len(METHODS) == 5


@pytest.mark.slow
def test_demo_runs_a_real_evaluation_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERG_") or k == "PERG_HOME"}
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "perg", "demo", "--sample", "2", "--settings", "relevant",
         "--methods", "zero_shot,pref_aligner", "--max-tokens", "32", "--workdir", str(workdir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "BR % [95% CI]" in proc.stdout and "RER % [95% CI]" in proc.stdout
    assert "zero-shot" in proc.stdout and "Pref-Aligner" in proc.stdout
    parse = re.search(r"Judge parse rate: (\d+)%\s+\((\d+)\s+of\s+(\d+)\s+replies", proc.stdout)
    assert parse is not None, proc.stdout[-3000:]
    assert parse[3] == "4" and int(parse[2]) >= 4  # constrained: every reply gives a rating
    assert str(workdir / "perg.duckdb") in proc.stdout.replace("\n", "")

    with duckdb.connect(str(workdir / "perg.duckdb"), read_only=True) as con:
        (run_id,) = con.execute("SELECT run_id FROM runs").fetchone() or ("",)
        results = con.execute(
            "SELECT setting, method, response IS NOT NULL, model_calls >= 1 FROM results "
            "WHERE run_id = ? ORDER BY ALL",
            [run_id],
        ).fetchall()
        baselines = con.execute("SELECT count(*) FROM baselines WHERE run_id = ?", [run_id])
        assert baselines.fetchone() == (2,)
    expected = [("relevant", "pref_aligner", True, True)] * 2
    assert results == expected + [("relevant", "zero_shot", True, True)] * 2
    # everything the demo started is stopped again
    status = subprocess.run(["bash", str(ROOT / "deploy" / "kafka.sh"), "status"],
                            env={**env, "PERG_KAFKA_DIR": str(workdir / "kafka")},
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert status.stdout.strip() == "stopped"


def test_a_judge_that_rates_everything_alike_is_reported_in_words_not_as_a_finding() -> None:
    same = JudgeParse(asked=60, rated=60, lowest=1, highest=1)
    assert same.uninformative() == "the judge rated every one of the 60 replies 1"
    warning = judge_warning(same) or ""
    assert "AFR and RER are not measured here" in warning and "--judge-url" in warning
    table = format_table([ZERO, ALIGNER], judged=False)
    assert "n/a*" in table
    words = headline([ZERO, ALIGNER], judged=False)
    assert words is not None and "BR from" in words and "RER" not in words
    few = JudgeParse(asked=60, rated=20, lowest=1, highest=5)
    assert few.uninformative() == "the judge gave a rating for only 20 of 60 replies"
    assert judge_warning(JudgeParse(asked=60, rated=58, lowest=1, highest=5)) is None
    assert judge_warning(JudgeParse(asked=0, rated=0)) is None


def test_deploy_script_passes_its_log_lines_on_as_they_come() -> None:
    """perg demo prints what a deploy script is doing (e.g. an install's "~30 s") off a terminal
    too: the script's stderr lines reach the progress callback."""
    from perg.local import deploy_script

    seen: list[str] = []
    with pytest.raises(RuntimeError, match="usage"):
        deploy_script("llama-server.sh", "no-such-command", env=os.environ, progress=seen.append)
    assert seen and seen[0].startswith("usage: ")
