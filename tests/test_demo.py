"""The README's main command on the real embedded model (SmolLM2-135M on llama.cpp, CPU).

Builds the llama-cpp-python environment on first use (deploy/llama-server.sh install, several
minutes) and reuses it afterwards. A small sample keeps the CPU run short."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_a_real_evaluation_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERG_") or k == "PERG_HOME"}
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "perg", "demo", "--rows", "2", "--settings", "relevant",
         "--methods", "zero_shot,pref_aligner", "--max-tokens", "32", "--workdir", str(workdir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "BR [95% CI]" in proc.stdout and "RER [95% CI]" in proc.stdout
    assert " full " in proc.stdout
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
