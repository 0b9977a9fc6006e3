"""``perg score`` and ``perg prompts render``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from perg.cli import main
from perg.cli.score import JSON_KEYS, score_file
from perg.config import default_data_dir

DATA = default_data_dir()
FIXTURE = Path(__file__).parent / "fixtures" / "core" / "outcomes_small.csv"
needs_shared = pytest.mark.skipif(
    not (DATA / "golden_rendered.json").is_file(), reason="shared PERG data not found"
)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / "golden_rendered.json").read_text("utf-8"))
    return loaded


def test_score_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "score", str(FIXTURE), "--json")
    assert code == 0
    rows = json.loads(out)
    assert all(tuple(row) == JSON_KEYS for row in rows)
    full = rows[2]
    assert (full["run_id"], full["setting"], full["method"], full["source"]) == (
        "offline",
        "relevant",
        "zero_shot",
        "full",
    )
    assert (full["n_rows"], full["n_qstar"]) == (8, 6)
    assert (full["BR"], full["AFR"], full["RER"], full["PVR"]) == (
        200 / 6,
        200 / 6,
        400 / 6,
        300 / 7,
    )
    irrelevant = rows[3]
    assert irrelevant["setting"] == "irrelevant"
    assert irrelevant["AFR"] is None and irrelevant["RER"] == irrelevant["BR"]
    assert rows == [{k: r[k] for k in JSON_KEYS} for r in score_file(FIXTURE)]


def test_score_run_name_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "score", str(FIXTURE), "--run-name", "nightly")
    assert code == 0
    metrics, missing_answers, notes = out.split("\n\n")
    for table in (metrics, missing_answers):
        lines = table.splitlines()
        assert lines[0].startswith("run ")
        assert all(line.startswith("nightly ") for line in lines[1:])
    assert missing_answers.splitlines()[0].split()[4:8] == [
        "NoPrefInvalid", "PrefInvalid", "MCValidDrop", "PDDF"
    ]  # fmt: skip
    assert notes.startswith("Answers, pref_answer: 0 of 11 values are no option letter")


def test_score_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("source,setting\nx,relevant\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "score", str(bad))
    assert (code, out) == (2, "")
    assert f"{bad}: missing required column(s): method, row_id" in err
    code, _, err = run_cli(capsys, "score", str(tmp_path / "absent.parquet"))
    assert code == 2 and "no such results file" in err


@needs_shared
def test_render_matches_golden(capsys: pytest.CaptureFixture[str], golden: dict[str, Any]) -> None:
    argv = ["prompts", "render", "--row", "0", "--setting", "mixed", "--method", "cot", "--json"]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    assert json.loads(out) == {
        "messages": [
            {"role": "system", "content": golden["sys_cot_mixed"]},
            {"role": "user", "content": golden["user_prompt"]},
        ]
    }


@needs_shared
@pytest.mark.parametrize(
    ("extra", "key", "role"),
    [
        (["--method", "baseline"], "sys_nopref", "system"),
        (["--method", "zero_shot", "--setting", "irrelevant"], "sys_direct_irrelevant", "system"),
        (
            ["--method", "self_critic", "--stage", "2", "--response", "<INITIAL RESPONSE>"],
            "critic_user_msg",
            "user",
        ),
        (
            ["--method", "pref_aligner", "--stage", "2", "--response", "<NO-PREF RESPONSE>"],
            "aligner_user_msg",
            "user",
        ),
    ],
)
def test_render_methods_and_stages(
    capsys: pytest.CaptureFixture[str],
    golden: dict[str, Any],
    extra: list[str],
    key: str,
    role: str,
) -> None:
    code, out, _ = run_cli(capsys, "prompts", "render", "--row", "0", "--json", *extra)
    assert code == 0
    messages = json.loads(out)["messages"]
    assert [m["content"] for m in messages if m["role"] == role] == [golden[key]]


@needs_shared
def test_render_layouts_and_strict(
    capsys: pytest.CaptureFixture[str], golden: dict[str, Any]
) -> None:
    base = ["prompts", "render", "--row", "0", "--method", "baseline"]
    _, out, _ = run_cli(capsys, *base, "--layout", "merged", "--json")
    assert json.loads(out)["messages"] == [
        {"role": "user", "content": golden["sys_nopref"] + "\n\n\n" + golden["user_prompt"]}
    ]
    _, out, _ = run_cli(capsys, *base, "--layout", "inst")
    assert out == f"[INST] {golden['sys_nopref']}\n{golden['user_prompt']} [/INST] \n"
    _, out, _ = run_cli(capsys, *base)
    assert out.startswith("--- system ---\n" + golden["sys_nopref"] + "\n--- user ---\n")
    aligner = ["prompts", "render", "--row", "0", "--method", "pref_aligner", "--stage", "2"]
    _, out, _ = run_cli(capsys, *aligner, "--setting", "mixed", "--protocol", "strict")
    assert "User Preference: [\"I don't enjoy" in out
    _, out, _ = run_cli(capsys, *aligner, "--setting", "mixed")
    assert "User Preference: I prefer straightforward" in out


@needs_shared
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--row", "7208", "--method", "cot"], "row id 7208 out of range 0-7207"),
        (["--row", "0", "--method", "cot", "--stage", "2"], "method cot has no stage 2"),
        (["--row", "0", "--method", "cot", "--protocol", "nope.json"], "cannot read protocol"),
    ],
)
def test_render_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, "prompts", "render", *argv)
    assert (code, out) == (2, "")
    assert message in err


@needs_shared
def test_render_from_a_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(DATA / "paper_protocol.json", tmp_path / "paper_protocol.json")
    with (tmp_path / "pergdata.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "question",
                "options",
                "gold_option",
                "gold_answer",
                "category",
                "source",
                "preference",
            ]
        )
        writer.writerow(["Pick one?", "['x', 'y']", "B", "y", "", "cais/mmlu", "Be brief."])
    argv = ["prompts", "render", "--row", "0", "--method", "zero_shot", "--json"]
    code, out, _ = run_cli(capsys, *argv, "--data", str(tmp_path))
    assert code == 0
    system, user = json.loads(out)["messages"]
    assert "Here is the user preference: Be brief..\n" in system["content"]
    assert user["content"].endswith("Question : Pick one?\nOptions: \nA. x\nB. y\n")
    (tmp_path / "pergdata.csv").write_text("question\n", encoding="utf-8")
    code, _, err = run_cli(capsys, *argv, "--data", str(tmp_path))
    assert code == 2 and "options: missing column" in err


@needs_shared
def test_installed_commands_run(tmp_path: Path, golden: dict[str, Any]) -> None:
    def perg(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "perg", *argv],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )

    scored = perg("score", str(FIXTURE), "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)[2]["source"] == "full"
    rendered = perg("prompts", "render", "--row", "0", "--method", "baseline", "--json")
    assert rendered.returncode == 0, rendered.stderr
    assert json.loads(rendered.stdout)["messages"][1]["content"] == golden["user_prompt"]
    failed = perg("score", str(tmp_path / "absent.csv"))
    assert failed.returncode == 2 and "no such results file" in failed.stderr
