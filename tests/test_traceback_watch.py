"""The suite-wide traceback watch (tests/subprocess_site/sitecustomize.py) sees each way a
Python process prints a traceback, and nothing else."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAMS = {
    "uncaught": "raise ValueError('bad row')",
    "thread": "import threading\nt = threading.Thread(target=lambda: 1 / 0); t.start(); t.join()",
    "logged": "import logging\n"
    "try:\n    {}['x']\nexcept KeyError:\n    logging.exception('lookup')",
}


def run_watched(program: str, folder: Path) -> list[str]:
    # a folder of its own, so this test's deliberate tracebacks do not fail the session
    env = {**os.environ, "TESTS_TRACEBACK_DIR": str(folder)}
    subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, check=False)
    return [path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.txt"))]


@pytest.mark.parametrize("kind", sorted(PROGRAMS))
def test_each_kind_of_traceback_is_recorded(kind: str, tmp_path: Path) -> None:
    (record,) = run_watched(PROGRAMS[kind], tmp_path)
    assert record.splitlines()[0] == kind
    assert "Traceback (most recent call last)" in record


def test_a_clean_process_records_nothing_but_its_start(tmp_path: Path) -> None:
    assert run_watched("import logging; logging.warning('fine')", tmp_path) == []
    (line,) = (tmp_path / "processes.log").read_text(encoding="utf-8").splitlines()
    assert "logging.warning" in line
