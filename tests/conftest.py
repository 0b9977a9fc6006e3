"""Shared fixtures: the real Kafka broker (tests/kafka_fixture.py); and the watch on every
traceback a Python process of the suite prints (tests/subprocess_site/sitecustomize.py), which
fails the session when there is any."""

import os
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["kafka_fixture"]

SUBPROCESS_SITE = Path(__file__).parent / "subprocess_site"
TRACEBACK_DIR = pytest.StashKey[Path]()
TRACEBACKS = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    """Every process started from here on loads sitecustomize.py and reports its tracebacks."""
    folder = Path(tempfile.mkdtemp(prefix="perg-test-tracebacks-"))
    config.stash[TRACEBACK_DIR] = folder
    os.environ["TESTS_TRACEBACK_DIR"] = str(folder)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, (str(SUBPROCESS_SITE), os.environ.get("PYTHONPATH")))
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    folder = session.config.stash[TRACEBACK_DIR]
    found = [path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.txt"))]
    session.config.stash[TRACEBACKS] = found
    if found and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    started = config.stash[TRACEBACK_DIR] / "processes.log"
    processes = len(started.read_text(encoding="utf-8").splitlines()) if started.exists() else 0
    found = config.stash.get(TRACEBACKS, [])
    title = f"tracebacks in the {processes} Python processes the tests ran: {len(found)}"
    terminalreporter.write_sep("=", title)
    for text in found:
        terminalreporter.write_line(text)
