"""A newcomer's bad input, each case run as a user's shell runs it (``python -m perg`` in a fresh
process): the exit code (2 bad input, 3 unreachable, 1 a check that ran and failed), one line
naming the flag, variable, file or field, and never a traceback (issue 22)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fixtures.live.runs import make_spec, verdicts

from perg.config import default_data_dir
from perg.store import ResultStore

ROOT = Path(__file__).resolve().parent.parent
ENDPOINTS = ["--model-url", "http://127.0.0.1:9/v1", "--model", "m"]
ENDPOINTS += ["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "j"]
needs_shared = pytest.mark.skipif(
    not (default_data_dir() / "paper_protocol.json").is_file(), reason="shared PERG data not found"
)


@dataclass(frozen=True)
class Case:
    """``perg ARGV`` with ``env`` (``{dir}`` in a value: the test's folder) must exit with
    ``code`` and say ``says`` on stderr (or stdout, for ``out``)."""

    name: str
    argv: tuple[str, ...]
    code: int
    says: str
    env: dict[str, str] = field(default_factory=dict)
    out: bool = False


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files the cases name: bad config files, a results store with one unfinished run."""
    root = tmp_path_factory.mktemp("bad-input")
    (root / "latin1.toml").write_bytes('kafka = "caf\xe9:9092"\n'.encode("latin-1"))
    (root / "typo.toml").write_text('kafak = "127.0.0.1:9092"\n')
    (root / "section.toml").write_text('[kafka]\nbootstrap = "127.0.0.1:9092"\n')
    (root / "confdir").mkdir()
    spec = make_spec("unfinished", 4)
    store = ResultStore(root / "store.duckdb")
    store.save_run(spec)
    store.save_verdicts(verdicts(spec, [0]))  # one of four rows stored
    store.close()
    return root


NO_SINK = {"PERG_SINK_URL": "http://127.0.0.1:9", "PERG_DB": "{dir}/store.duckdb"}
CASES = [
    # configuration
    Case("config not UTF-8", ("status",), 2, "latin1.toml: not UTF-8 text",
         {"PERG_CONFIG": "{dir}/latin1.toml"}),
    Case("config key typo", ("status",), 2, "unknown setting 'kafak'",
         {"PERG_CONFIG": "{dir}/typo.toml"}),
    Case("config section", ("status",), 2, "unknown section [kafka]",
         {"PERG_CONFIG": "{dir}/section.toml"}),
    Case("config is a folder", ("status",), 2, "confdir, which is not a file",
         {"PERG_CONFIG": "{dir}/confdir"}),
    Case("sink URL unclosed bracket", ("status",), 2, "PERG_SINK_URL='http://[::1'",
         {"PERG_SINK_URL": "http://[::1"}),
    Case("sink URL without scheme", ("status",), 2, "is not an http:// or https:// URL",
         {"PERG_SINK_URL": "notaurl"}),
    Case("kafka bootstrap malformed", ("status",), 2, "PERG_KAFKA='h::::'",
         {"PERG_KAFKA": "h::::"}),
    # perg submit
    Case("lora extractor without its URL", ("submit", *ENDPOINTS, "--extractor", "lora",
         "--rows", "2"), 2, "--extractor lora needs --lora-url and --lora-model"),
    Case("bootstrap flag malformed", ("submit", *ENDPOINTS, "--rows", "2", "--bootstrap",
         "h::::"), 2, "--bootstrap='h::::': 'h::::' is not HOST:PORT"),
    Case("bootstrap flag with a user", ("submit", *ENDPOINTS, "--rows", "2", "--bootstrap",
         "me@h:9092"), 2, "is not HOST:PORT"),
    Case("names as the README writes them", ("submit", *ENDPOINTS, "--rows", "2", "--methods",
         "zero-shot,Pref-Aligner", "--bootstrap", "127.0.0.1:9"), 3, "cannot reach Kafka"),
    Case("an unknown method", ("submit", *ENDPOINTS, "--methods", "zero-shoot"), 2,
         "argument --methods: unknown ['zero-shoot']"),
    # perg status --wait
    Case("wait timeout nan", ("status", "r", "--wait", "--timeout", "nan"), 2,
         "argument --timeout: must be a finite number of seconds > 0"),
    Case("wait timeout negative", ("status", "r", "--wait", "--timeout", "-5"), 2,
         "argument --timeout: must be a finite number of seconds > 0"),
    Case("wait timeout zero", ("status", "r", "--wait", "--timeout", "0"), 2,
         "argument --timeout"),
    Case("wait on a run that never appears", ("status", "nope", "--wait", "--stall-timeout",
         "1.5"), 1, "run 'nope' never appeared", NO_SINK),
    Case("wait on a run nobody finishes", ("status", "unfinished", "--wait", "--stall-timeout",
         "1.5"), 1, "nothing new stored for 1.5 s (--stall-timeout); 4/16 results stored",
         NO_SINK),
    Case("wait prints progress off a terminal", ("status", "unfinished", "--wait",
         "--stall-timeout", "1.5"), 1, "run unfinished: generate 0/20 · judge + store 4/16",
         NO_SINK),
    # perg sql: stored text is data, never markup or terminal control
    Case("sql value that looks like rich markup", ("sql", "SELECT '[/bold] x' AS a",
         "--format", "table"), 0, "[/bold] x", NO_SINK, out=True),
    Case("sql escape sequence in a value", ("sql", "SELECT chr(27) || '[31mred' AS a",
         "--format", "table"), 0, "\\x1b[31mred", NO_SINK, out=True),
    Case("sql off a terminal prints whole values", ("sql", "SELECT run_id, model FROM "
         "runs"), 0, "unfinished,scripted", NO_SINK, out=True),
    # perg demo checks its options before it starts anything
    Case("demo protocol typo", ("demo", "--protocol", "papr"), 2, "papr"),
    Case("demo rows beyond the dataset", ("demo", "--rows", "99999"), 2, "99999"),
    Case("demo sample of zero", ("demo", "--sample", "0"), 2, "argument --sample"),
]  # fmt: skip


@pytest.fixture(scope="module")
def hung_sink() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def perg(argv: tuple[str, ...], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PERG_")}
    return subprocess.run(
        [sys.executable, "-m", "perg", *argv],
        cwd=cwd,
        env={**clean, "PERG_DATA_DIR": str(default_data_dir()), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_shared
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_case(case: Case, folder: Path) -> None:
    env = {key: value.replace("{dir}", str(folder)) for key, value in case.env.items()}
    proc = perg(case.argv, env, cwd=folder)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == case.code, proc.stderr
    assert case.says in (proc.stdout if case.out else proc.stderr), proc.stderr + proc.stdout
    if case.argv[0] == "demo":  # refused before anything was started
        assert "Kafka" not in proc.stdout + proc.stderr


def test_a_sink_that_never_answers_is_unavailable_within_its_timeout(
    hung_sink: str, folder: Path
) -> None:
    started = time.monotonic()
    proc = perg(("status",), {"PERG_SINK_URL": hung_sink, "PERG_SINK_TIMEOUT_S": "1"}, folder)
    assert time.monotonic() - started < 30
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 3, proc.stderr
    assert f"the sink at {hung_sink} did not answer within 1 s (PERG_SINK_TIMEOUT_S)" in proc.stderr


def test_the_corpus_names_every_exit_code() -> None:
    assert {c.code for c in CASES} == {0, 1, 2, 3}
