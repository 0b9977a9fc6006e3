"""A newcomer's bad input, each case run as a user's shell runs it (``python -m perg`` in a fresh
process): the exit code (2 bad input, 3 unreachable, 1 a check that ran and failed), one line
naming the flag, variable, file or field, and never a traceback (issue 22)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures.live.runs import make_spec, verdicts

from perg.config import default_data_dir
from services.sink.store import ResultStore

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
    write_results_files(root)
    spec = make_spec("unfinished", 4)
    store = ResultStore(root / "store.duckdb")
    store.save_run(spec)
    store.save_verdicts(verdicts(spec, [0]))  # one of four rows stored
    store.close()
    return root


HEADER = "source,setting,method,row_id,gold_option,nopref_answer,pref_answer,judge_rating"
OUTCOME = "cais/mmlu,relevant,zero_shot,{row},A,A,A,{rating}"
RECORD = {
    "source": "cais/mmlu",
    "setting": "relevant",
    "method": "zero_shot",
    "row_id": 1,
    "gold_option": "A",
    "nopref_answer": "A",
    "pref_answer": "A",
    "judge_rating": 4,
}


def jsonl(*records: dict[str, object]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def write_results_files(root: Path) -> None:
    """Results files for ``perg score``, each wrong in one way (and one that is right)."""
    good = f"{HEADER}\n{OUTCOME.format(row=1, rating=4)}\n{OUTCOME.format(row=2, rating=2)}\n"
    files = {
        "good.csv": good,
        "ragged.csv": f"{HEADER}\n{OUTCOME.format(row=1, rating=4)}\ncais/mmlu,relevant,2\n",
        "capital.csv": good.replace("source,setting", "Source,Setting", 1),
        "shape.json": json.dumps({"rows": [RECORD]}),
        "threshold0.csv": good.replace("judge_rating\n", "judge_rating,followed_threshold\n")
        .replace(",4\n", ",4,0\n").replace(",2\n", ",2,0\n"),
        "threshold6.csv": f"{HEADER},followed_threshold\n{OUTCOME.format(row=1, rating=4)},6\n",
        "threshold100.csv": f"{HEADER},followed_threshold\n"
        f"{OUTCOME.format(row=1, rating=4)},100\n",
        "extractor.csv": f"{HEADER},extractor\n{OUTCOME.format(row=1, rating=4)},lorra\n",
        "unrated.csv": f"{HEADER}\n{OUTCOME.format(row=1, rating='')}\n"
        f"{OUTCOME.format(row=2, rating='')}\n",
        "baseline.csv": f"{good}cais/mmlu,relevant,cot,1,A,B,A,3\n",
        "repeated.jsonl": '{"source": "x", ' + json.dumps(RECORD)[1:] + "\n",
        "repeated.json": '[{"source": "x", ' + json.dumps(RECORD)[1:] + "]",
        "boolean.jsonl": jsonl(RECORD, {**RECORD, "row_id": 2, "judge_rating": True}),
        "booleans.jsonl": jsonl({**RECORD, "judge_rating": True}),
        # a value of another kind after DuckDB's 20,480-record type sample
        "late.jsonl": jsonl(*({**RECORD, "row_id": i} for i in range(20_500)),
                            {**RECORD, "row_id": 20_500, "judge_rating": "high"}),
    }  # fmt: skip
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "utf16.csv").write_bytes(good.encode("utf-16"))
    (root / "latin1.csv").write_bytes(good.replace("A,A,A,2", "A,\xc9,A,2").encode("latin-1"))
    (root / "results.csv").mkdir()
    os.mkfifo(root / "fifo.csv")
    columns = [*HEADER.split(","), "judge_rating"]
    values = [["cais/mmlu"], ["relevant"], ["zero_shot"], [1], ["A"], ["A"], ["A"], [4], [1]]
    table = pa.Table.from_arrays([pa.array(v) for v in values], names=columns)
    pq.write_table(table, root / "duplicated.parquet")


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
    # perg score: a results file wrong in one way names the file, line and field
    Case("score a good file", ("score", "good.csv"), 0, "full", out=True),
    Case("score protocol typo", ("score", "good.csv", "--protocol", "papr"), 2,
         "--protocol 'papr': papr: cannot read protocol"),
    Case("score JSONL repeated key", ("score", "repeated.jsonl"), 2,
         "repeated.jsonl:1: source: repeated key"),
    Case("score JSON repeated key", ("score", "repeated.json"), 2,
         "repeated.json: row 1: source: repeated key"),
    Case("score ragged CSV row", ("score", "ragged.csv"), 2,
         "ragged.csv:3: file: 3 fields, the header (line 1) has 8"),
    Case("score JSON of the wrong shape", ("score", "shape.json"), 2,
         "read column(s) 'rows'; expected a JSON array of objects"),
    Case("score capitalised header", ("score", "capital.csv"), 2,
         "capital.csv:1: source, setting: missing required column(s); the file has 'Source', "
         "'Setting': column names are lower case"),
    Case("score UTF-16 file", ("score", "utf16.csv"), 2,
         "utf16.csv:1: file: UTF-16 text, not UTF-8"),
    Case("score Latin-1 file", ("score", "latin1.csv"), 2,
         "latin1.csv:3: file: not UTF-8 text (byte 0xc9 at column 34"),
    Case("score a directory", ("score", "results.csv"), 2,
         "results.csv: is a directory, not a results file"),
    Case("score a FIFO", ("score", "fifo.csv"), 2, "fifo.csv: is not a regular file"),
    Case("PERG_DB naming a CSV file", ("score", "--run", "r"), 2,
         "PERG_DB={dir}/good.csv: not a DuckDB database",
         {"PERG_SINK_URL": "http://127.0.0.1:9", "PERG_DB": "{dir}/good.csv"}),
    Case("score JSONL type error after the type sample", ("score", "late.jsonl"), 2,
         "late.jsonl:20501: judge_rating: 'high' is not a whole number"),
    Case("score threshold 0", ("score", "threshold0.csv"), 2,
         "threshold0.csv:2: followed_threshold: 0 is outside the rating scale 1..5 (followed = "
         "rating >= it) (2 rows in all)"),
    Case("score threshold 6", ("score", "threshold6.csv"), 2,
         "threshold6.csv:2: followed_threshold: 6 is outside the rating scale 1..5"),
    Case("score threshold 100", ("score", "threshold100.csv"), 2,
         "followed_threshold: 100 is outside the rating scale 1..5"),
    Case("score boolean rating among numbers", ("score", "boolean.jsonl"), 2,
         "boolean.jsonl:2: judge_rating: 'true' is not a whole number"),
    Case("score boolean ratings only", ("score", "booleans.jsonl"), 2,
         "booleans.jsonl:1: judge_rating: true is a boolean, not a whole number"),
    Case("score unknown extractor", ("score", "extractor.csv"), 2,
         "extractor.csv:2: extractor: unknown extractor 'lorra' (known: rules, llm, lora)"),
    Case("score duplicated Parquet column", ("score", "duplicated.parquet"), 2,
         "duplicated.parquet: judge_rating: duplicated column (columns 8, 9)"),
    # ... and what the metrics of a valid file cannot say is said in words
    Case("score all-empty judge ratings", ("score", "unrated.csv"), 0,
         "unrated.csv: judge_rating: AFR and RER are not measured here: the judge gave a "
         "rating for only 0 of 2 replies"),
    Case("score contradicting baseline answers", ("score", "baseline.csv"), 0,
         "nopref_answer: row 1 of run offline has different no-preference answers "
         "(relevant/zero_shot 'A', relevant/cot 'B'); each setting x method counts its own in "
         "Q*"),
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


STDERR: dict[str, str] = {}  # case name -> what it printed on stderr


@needs_shared
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_case(case: Case, folder: Path) -> None:
    env = {key: value.replace("{dir}", str(folder)) for key, value in case.env.items()}
    proc = perg(case.argv, env, cwd=folder)
    STDERR[case.name] = proc.stderr
    says = case.says.replace("{dir}", str(folder))
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == case.code, proc.stderr
    assert says in (proc.stdout if case.out else proc.stderr), proc.stderr + proc.stdout
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


@needs_shared
def test_no_case_of_the_whole_corpus_prints_a_traceback() -> None:
    """Runs after the cases (file order): the stderr of every one of them, grepped at once."""
    if set(STDERR) != {c.name for c in CASES}:
        pytest.skip("only part of the corpus ran (-k?)")
    tracebacks = [name for name, stderr in STDERR.items() if "Traceback" in stderr]
    assert not tracebacks, tracebacks


def test_the_corpus_names_every_exit_code() -> None:
    assert {c.code for c in CASES} == {0, 1, 2, 3}
