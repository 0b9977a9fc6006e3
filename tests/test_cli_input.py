"""Bad input and unreachable services at the command line: exit code 2 (3 for an unreachable
broker), one message naming the file, line and field, never a traceback (issues 9 and 13)."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from perg.cli import main
from perg.config import default_data_dir
from perg.dataset import COLUMNS
from perg.local import free_port

FIXTURES = Path(__file__).parent / "fixtures"
OUTCOMES = FIXTURES / "core" / "outcomes_small.csv"
HOSTILE = FIXTURES / "hostile"
HOSTILE_CASES: dict[str, list[object]] = json.loads((HOSTILE / "expected.json").read_text())
needs_shared = pytest.mark.skipif(
    not (default_data_dir() / "paper_protocol.json").is_file(), reason="shared PERG data not found"
)
ENDPOINTS = ["--model-url", "http://127.0.0.1:9/v1", "--model", "m"]
ENDPOINTS += ["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "j"]
ROW = {
    "question": "Which is a fruit?",
    "options": "['apple', 'stone', 'chair']",
    "gold_option": "A",
    "gold_answer": "apple",
    "category": "",
    "source": "tau/commonsense_qa",
    "preference": "I prefer concise answers.",
}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def perg(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m perg ARGV`` in a fresh process: what a user's shell sees."""
    return subprocess.run(
        [sys.executable, "-m", "perg", *argv], cwd=cwd, capture_output=True, text=True, check=False
    )


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "thirty.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([ROW] * 30)
    return path


# -- perg score ------------------------------------------------------------------------------

# (text replaced in the fixture, what stderr says after "perg score: PATH:")
SCORE_CASES = [
    (
        ("P2,relevant,zero_shot,1,", "P2,relevant,zero-shot,1,"),
        "3: method: unknown method 'zero-shot'",
    ),
    (("cais/mmlu,anatomy,P1", "mmlu,anatomy,P1"), "6: source: unknown source 'mmlu'"),
    (("P2,irrelevant,cot", "P2,sideways,cot"), "12: setting: unknown setting 'sideways'"),
    ((",1,A,A,C,5,", ",1,A,A,C,99,"), "3: judge_rating: 99 is outside the scale 1..5"),
    ((",3,D,A,D,3,", ",3,D,A,D,3.7,"), "5: judge_rating: '3.7' is not a whole number"),
    ((",12,C,D,D,", ",12,7,D,D,"), "8: gold_option: '7' is not an option letter [A-Z]"),
]


@pytest.mark.parametrize(("edit", "message"), SCORE_CASES)
def test_score_rejects_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: tuple[str, str], message: str
) -> None:
    path = tmp_path / "results.csv"
    text = OUTCOMES.read_text(encoding="utf-8")
    assert edit[0] in text
    path.write_text(text.replace(*edit), encoding="utf-8")
    code, out, err = run_cli(capsys, "score", str(path))
    assert (code, out) == (2, "")
    assert err.startswith(f"perg score: {path}:{message}")
    assert err.count("\n") == 1


def test_score_header_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.csv"
    path.write_text(OUTCOMES.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "score", str(path))
    assert (code, out) == (2, "")
    assert err == f"perg score: {path}:2: file: no outcome rows (only a header)\n"


def test_score_unreadable_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "results.csv"
    path.write_bytes(random.Random(9).randbytes(4000))
    code, out, err = run_cli(capsys, "score", str(path))
    assert (code, out) == (2, "")
    assert err.startswith(f"perg score: {path}:1: file: ")  # not UTF-8 text
    assert err.count("\n") == 1


def test_score_bad_file_in_a_fresh_process(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text(OUTCOMES.read_text(encoding="utf-8").replace(",1,A,A,C,5,", ",1,A,A,C,99,"))
    done = perg("score", str(path), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"perg score: {path}:3: judge_rating: 99 is outside")
    assert "Traceback" not in done.stderr


# -- perg submit -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            "99999",
            "row limit 99999 is more than the 30 rows of {path} (omit the limit to take every row)",
        ),
        (
            "31",
            "row limit 31 is more than the 30 rows of {path} (omit the limit to take every row)",
        ),
        ("0-99999999999", "row id 99999999999 out of range 0-29 ({path})"),
        ("0", "row limit must be at least 1, got '0'"),
        ("3-1", "bad row range '3-1': end before start"),
    ],
)
def test_submit_rows_beyond_the_dataset(
    dataset: Path, capsys: pytest.CaptureFixture[str], rows: str, message: str
) -> None:
    code, out, err = run_cli(
        capsys, "submit", *ENDPOINTS, "--dataset", str(dataset), "--rows", rows
    )
    assert (code, out) == (2, "")
    assert err == f"perg submit: {message.format(path=dataset)}\n"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--sample", "0", "argument --sample: must be at least 1, got 0"),
        ("--max-tokens", "0", "argument --max-tokens: must be at least 1, got 0"),
        ("--max-tokens", "many", "argument --max-tokens: 'many' is not a whole number"),
        ("--temperature", "-1", "argument --temperature: must be a finite number >= 0, got -1"),
        ("--temperature", "nan", "argument --temperature: must be a finite number >= 0, got nan"),
    ],
)
def test_submit_flag_bounds(
    dataset: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["submit", *ENDPOINTS, "--dataset", str(dataset), flag, value])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_submit_thinking_needs_a_thinking_model(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        capsys, "submit", *ENDPOINTS, "--dataset", str(dataset), "--thinking", "on"
    )
    assert (code, out) == (2, "")
    assert err == "perg submit: --thinking: model 'm' has no thinking switch (Qwen3 has)\n"
    with pytest.raises(SystemExit) as info:
        main(["submit", *ENDPOINTS, "--layout", "chat"])
    assert info.value.code == 2
    assert "argument --layout: invalid choice: 'chat'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--model-url", "127.0.0.1:8080/v1", "--model-url '127.0.0.1:8080/v1' is not an http"),
        ("--judge-url", "file:///etc/passwd", "--judge-url 'file:///etc/passwd' is not an http"),
        ("--judge-url", "http://", "--judge-url 'http://' is not an http:// or https:// URL"),
        ("--judge-url", "http://[::1/v1", "--judge-url 'http://[::1/v1' is not an http"),
        ("--model-url", "http://h:99999/v1", "--model-url 'http://h:99999/v1' is not an http"),
        ("--model-token-env", "PERG_TEST_UNSET_TOKEN", "names PERG_TEST_UNSET_TOKEN, which is not"),
    ],
)
def test_submit_bad_endpoints(
    dataset: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    argv = [*ENDPOINTS, flag, value]  # a repeated flag: the last one counts
    code, out, err = run_cli(capsys, "submit", *argv, "--dataset", str(dataset))
    assert (code, out) == (2, "")
    assert err.startswith("perg submit: ") and message in err


@pytest.mark.parametrize("name", sorted(HOSTILE_CASES))
def test_submit_hostile_dataset(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    line, field, fragment = HOSTILE_CASES[name]
    path = HOSTILE / name
    code, out, err = run_cli(capsys, "submit", *ENDPOINTS, "--dataset", str(path))
    assert (code, out) == (2, "")
    assert f"{path}:{line}: {field}: " in err and str(fragment) in err
    assert err.startswith("perg submit: ")


def test_submit_hostile_dataset_in_a_fresh_process(tmp_path: Path) -> None:
    path = HOSTILE / "deep_record.jsonl"
    done = perg("submit", *ENDPOINTS, "--dataset", str(path), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"perg submit: {path}:1: json: nested too deeply\n"


@needs_shared
def test_submit_kafka_unreachable(dataset: Path, tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = perg("submit", *ENDPOINTS, "--dataset", str(dataset), "--bootstrap", bootstrap,
                cwd=tmp_path)  # fmt: skip
    assert (done.returncode, done.stdout) == (3, "")
    assert done.stderr.startswith(f"perg submit: cannot reach Kafka at {bootstrap} (")
    assert done.stderr.count("\n") == 1, done.stderr


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "2 bad input, 3 service unavailable" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["submit", "--help"])
    assert "3 Kafka unreachable" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("command", "env", "message"),
    [
        ("status", {"PERG_PARTITIONS": "six"}, "PERG_PARTITIONS='six' is not a whole number"),
        ("status", {"PERG_SINK_PORT": "0"}, "PERG_SINK_PORT=0 must be at least 1"),
        (
            "status",
            {"PERG_CONFIG": "missing.toml"},
            "PERG_CONFIG names missing.toml, which does not exist",
        ),
        ("status", {"PERG_CONFIG": "bad.toml"}, "bad.toml: not valid TOML"),
        (
            "worker",
            {"PERG_SESSION_TIMEOUT_S": "soon"},
            "PERG_SESSION_TIMEOUT_S='soon' is not a number of seconds",
        ),
        (
            "worker",
            {"PERG_SESSION_TIMEOUT_S": "inf"},
            "PERG_SESSION_TIMEOUT_S='inf' must be a finite number of seconds >= 0",
        ),
        ("worker", {"PERG_WORKER_IN_FLIGHT": "0"}, "PERG_WORKER_IN_FLIGHT=0 must be at least 1"),
    ],
)
def test_bad_configuration_names_the_setting(
    command: str, env: dict[str, str], message: str, tmp_path: Path
) -> None:
    (tmp_path / "bad.toml").write_text("kafka = \n")
    argv = ["status"] if command == "status" else ["worker", "generator"]
    proc = subprocess.run(
        [sys.executable, "-m", "perg", *argv],
        cwd=tmp_path,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PERG_")}, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
