"""The hostile-SQL corpus (tests/hostile_sql/corpus.py) against every way in, and each defence
layer on its own: nothing refused-or-harmless may change a row, write a file or leak a secret.

* the live HTTP API of a sink-like server in a process of its own (tests/hostile_sql/serve.py:
  create_app over a real results file, served on a real port);
* ``perg sql`` through that API, and ``perg sql`` reading the file when no sink answers;
* the statement guard alone (no database at all), and the engine alone (guard bypassed).

Before and after, the results file and a canary folder of bait files are hashed byte for byte;
every answer is searched for the bait's secret, an environment secret of the server, the
database path and catalog/setting text that the query itself did not contain.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures.live.runs import fails, make_spec, write_run
from hostile_sql.corpus import CORPUS
from pipeline_harness import running_pipeline

from perg.cli import main
from services.sink.live.engine import EngineRefused, harden
from services.sink.live.query import (
    QueryLimits,
    QueryTimeout,
    ResultTooLarge,
    RowCapExceeded,
    run_unguarded,
)
from services.sink.live.sqlguard import QueryRefused, check_query
from services.sink.store import ResultStore

SERVE = Path(__file__).parent / "hostile_sql" / "serve.py"
ENV_SECRET = "env-secret-" + secrets.token_hex(8)
CANARY_SECRET = "canary-secret-" + secrets.token_hex(8)
LIMITS = QueryLimits(timeout_s=1.0, row_cap=10_000, max_bytes=1_000_000)
# Text that no answer may contain unless the query itself contained it.
CATALOG_TEXT = (
    "CREATE TABLE", "CREATE VIEW", "PRIMARY KEY", "Did you mean", "temporary files",
    "enable_external_access", "temp_directory", "memory_limit", "lock_configuration",
    "pg_class", "sqlite_master", "duckdb_tables", "information_schema", "stored_secrets",
    ".duckdb/extensions",
)  # fmt: skip


@dataclass(frozen=True)
class Arena:
    canary: Path
    db: Path

    def fingerprint(self) -> dict[str, str]:
        """sha256 of every file under the canary folder and the results file's folder."""
        found = {}
        for root in (self.canary, self.db.parent):
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        return found

    def markers(self) -> tuple[str, ...]:
        return (ENV_SECRET, CANARY_SECRET, str(self.db), str(self.db.parent), *CATALOG_TEXT)

    def leaks(self, query: str, answer: str) -> list[str]:
        return [m for m in self.markers() if m in answer and m not in query]


def _bait(canary: Path) -> None:
    canary.mkdir(parents=True)
    (canary / "secret.txt").write_text(CANARY_SECRET)
    (canary / "bait.csv").write_text(f"run_id,secret\nbase,{CANARY_SECRET}\n")
    pq.write_table(
        pa.table({"run_id": ["base"], "secret": [CANARY_SECRET]}), canary / "bait.parquet"
    )
    with closing(duckdb.connect(str(canary / "other.duckdb"))) as con:
        con.execute("CREATE TABLE s AS SELECT ? AS secret", [CANARY_SECRET])


def _filled_store(db: Path) -> None:
    db.parent.mkdir(parents=True)
    store = ResultStore(db)
    write_run(store, make_spec("base", 30), pref_wrong=fails("a", 20), unfollowed=fails("f", 10))
    store.close()


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Arena:
    folder = tmp_path_factory.mktemp("attacks")
    _bait(folder / "canary")
    return Arena(folder / "canary", folder / "served" / "attack.duckdb")


@dataclass
class Tally:
    outcomes: collections.Counter[str]

    def __str__(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.outcomes.items()))


def _report(title: str, tally: Tally) -> None:
    print(f"\n{title}: {len(CORPUS)} queries; {tally}", file=sys.stderr)


# -- the corpus itself ------------------------------------------------------------------------


def test_corpus_covers_every_category() -> None:
    counts = collections.Counter(a.category for a in CORPUS)
    assert len(CORPUS) >= 100
    assert set(counts) == {"write", "statement", "file", "catalog", "cte", "multi", "resource"}
    assert len({a.name for a in CORPUS}) == len(CORPUS)


# -- layer 1: the guard alone -----------------------------------------------------------------


def test_guard_alone_refuses_the_corpus(arena: Arena) -> None:
    tally = Tally(collections.Counter())
    for attack in CORPUS:
        query = attack.text(str(arena.canary))
        try:
            check_query(query)
        except QueryRefused as exc:
            assert str(exc), attack.name
            assert not arena.leaks(query, str(exc)), attack.name
            tally.outcomes["refused"] += 1
            continue
        assert attack.expect != "refuse", f"the guard let through {attack.name!r}: {query}"
        tally.outcomes[f"allowed ({attack.expect})"] += 1
    _report("guard alone", tally)


# -- layer 2: the engine alone, guard bypassed ------------------------------------------------


def test_engine_alone_cannot_write_or_read_files(arena: Arena, tmp_path: Path) -> None:
    db = tmp_path / "engine" / "engine.duckdb"
    _filled_store(db)
    store = ResultStore(db)
    with closing(store.cursor()) as con:
        harden(con)
    content = "SELECT count(*), sum(hash(COLUMNS(*))) FROM {}"
    tables = ("runs", "baselines", "results", "progress", "dead_letters")
    before = {t: store.con.execute(content.format(t)).fetchall() for t in tables}
    canary = {k: v for k, v in arena.fingerprint().items() if k.startswith(str(arena.canary))}
    tally = Tally(collections.Counter())
    try:
        for attack in CORPUS:
            if not attack.engine_bounded:
                tally.outcomes["not run (guard only)"] += 1
                continue
            query = attack.text(str(arena.canary))
            try:
                result = run_unguarded(store, query, LIMITS)
            except (EngineRefused, QueryTimeout, RowCapExceeded, ResultTooLarge) as exc:
                tally.outcomes[type(exc).__name__] += 1
                continue
            except duckdb.Error as exc:
                assert CANARY_SECRET not in str(exc), attack.name
                tally.outcomes[type(exc).__name__] += 1
                continue
            answer = json.dumps(result.as_dict(), default=str)
            assert CANARY_SECRET not in answer and ENV_SECRET not in answer, attack.name
            tally.outcomes["ran"] += 1
        after = {t: store.con.execute(content.format(t)).fetchall() for t in tables}
        assert after == before
        now = {k: v for k, v in arena.fingerprint().items() if k.startswith(str(arena.canary))}
        assert now == canary
        assert {p.name for p in db.parent.iterdir()} <= {"engine.duckdb", "engine.duckdb.wal"}
    finally:
        store.close()
    _report("engine alone (guard bypassed)", tally)


# -- the whole path: a live server, perg sql through it, perg sql on the file -----------------


@pytest.fixture(scope="module")
def server(arena: Arena) -> Iterator[str]:
    _filled_store(arena.db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERG_")}
    env |= {"PERG_ATTACK_SECRET": ENV_SECRET, "PERG_SQL_TIMEOUT_S": "1",
            "PERG_SQL_MAX_BYTES": str(LIMITS.max_bytes)}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(SERVE), str(arena.db)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=arena.db.parent,  # no perg.toml there
    )
    assert process.stdout is not None
    ready: list[str] = []
    reader = threading.Thread(target=lambda: ready.append(process.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(60)
    assert ready and ready[0].startswith("READY "), f"the server did not start: {ready}"
    yield f"http://127.0.0.1:{int(ready[0].split()[1])}"
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def _post(url: str, query: str) -> tuple[int, str]:
    request = urllib.request.Request(
        url + "/sql",
        data=json.dumps({"sql": query}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_live_api_refuses_or_survives_the_corpus(arena: Arena, server: str) -> None:
    before = arena.fingerprint()
    count = "SELECT (SELECT count(*) FROM results) + (SELECT count(*) FROM runs) AS n"
    rows_before = _post(server, count)
    tally = Tally(collections.Counter())
    for attack in CORPUS:
        query = attack.text(str(arena.canary), server)
        status, body = _post(server, query)
        assert status < 500, f"{attack.name}: {status} {body[:300]}"
        assert not arena.leaks(query, body), f"{attack.name} leaked: {body[:300]}"
        if status == 200:
            assert attack.expect == "harmless", f"{attack.name} ran: {body[:300]}"
            tally.outcomes["harmless (200)"] += 1
        else:
            assert json.loads(body)["error"], attack.name
            tally.outcomes[f"refused ({status})"] += 1
    assert _post(server, count) == rows_before
    assert arena.fingerprint() == before
    _report("live HTTP API", tally)


def test_perg_sql_through_the_api(
    arena: Arena, server: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("PERG_SINK_URL", server)
    monkeypatch.delenv("PERG_SINK_TOKEN", raising=False)
    before = arena.fingerprint()
    tally = _run_cli(arena, capsys, server)
    assert arena.fingerprint() == before
    _report("perg sql through the API", tally)


def test_perg_sql_on_the_file(
    arena: Arena, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    db = tmp_path / "fallback" / "perg.duckdb"
    _filled_store(db)
    monkeypatch.setenv("PERG_DB", str(db))
    monkeypatch.setenv("PERG_SINK_URL", "http://127.0.0.1:9")  # nothing listens: the file
    monkeypatch.setenv("PERG_SQL_TIMEOUT_S", str(LIMITS.timeout_s))
    monkeypatch.setenv("PERG_SQL_MAX_BYTES", str(LIMITS.max_bytes))
    local = Arena(arena.canary, db)
    before = local.fingerprint()
    tally = _run_cli(local, capsys, "http://127.0.0.1:9")
    assert local.fingerprint() == before
    assert tally.outcomes["stale-file warnings"] == len(CORPUS)  # one per perg sql run
    _report("perg sql on the file (no sink)", tally)


def _run_cli(arena: Arena, capsys: pytest.CaptureFixture[str], url: str) -> Tally:
    tally = Tally(collections.Counter())
    for attack in CORPUS:
        query = attack.text(str(arena.canary), url)
        code = main(["sql", "--format", "json", query])
        out, err = capsys.readouterr()
        warning = "perg: no sink answers at"  # the local user's own file, named on purpose
        if err.startswith(warning):
            tally.outcomes["stale-file warnings"] += 1
            err = err.split("\n", 1)[1]
        assert code in (0, 2), f"{attack.name}: exit {code}: {err[-300:]}"
        assert not arena.leaks(query, out + err), f"{attack.name} leaked: {(out + err)[:300]}"
        if code == 0:
            assert attack.expect == "harmless", f"{attack.name} ran: {out[:300]}"
            tally.outcomes["harmless (exit 0)"] += 1
        else:
            assert err.strip(), attack.name
            tally.outcomes["refused (exit 2)"] += 1
    return tally


# -- a real sink worker of a real pipeline ----------------------------------------------------


@pytest.mark.kafka
@pytest.mark.slow
def test_real_sink_of_a_pipeline_run(
    arena: Arena, kafka_broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The corpus against the live API of the real sink process after a real run: no row
    changed, metrics still exact, no file written, nothing leaked."""
    monkeypatch.setenv("PERG_ATTACK_SECRET", ENV_SECRET)  # in every worker's environment
    monkeypatch.setenv("PERG_SQL_TIMEOUT_S", str(LIMITS.timeout_s))
    with running_pipeline(kafka_broker, tmp_path, f"attack-{uuid.uuid4().hex[:8]}") as pipeline:
        rows = ("--rows", "0-3", "--settings", "relevant,mixed", "--methods", "zero_shot,cot")
        run_id = pipeline.submit(*rows)
        done = pipeline.perg("status", run_id, "--wait", "--timeout", "300", timeout=330)
        assert done.returncode == 0, done.stderr[-2000:]
        url = pipeline.env["PERG_SINK_URL"]
        content = "SELECT count(*), sum(hash(COLUMNS(*))) FROM {}"
        tables = ("runs", "baselines", "results", "progress", "dead_letters")

        metrics = f"SELECT * FROM metrics_by_source WHERE run_id = '{run_id}' ORDER BY ALL"

        def state() -> list[tuple[int, str]]:
            return [_post(url, content.format(t)) for t in tables] + [_post(url, metrics)]

        before, canary = state(), arena.fingerprint()
        assert all(status == 200 for status, _ in before)
        tally = Tally(collections.Counter())
        for attack in CORPUS:
            query = attack.text(str(arena.canary), url)
            status, body = _post(url, query)
            assert status < 500, f"{attack.name}: {status} {body[:300]}"
            leaks = arena.leaks(query, body) + [m for m in (str(tmp_path),) if m in body]
            assert not leaks, f"{attack.name} leaked {leaks}: {body[:300]}"
            assert status != 200 or attack.expect == "harmless", f"{attack.name} ran: {body[:300]}"
            tally.outcomes["harmless (200)" if status == 200 else f"refused ({status})"] += 1
        assert state() == before
        assert {k: v for k, v in arena.fingerprint().items() if k in canary} == canary
        assert set(arena.fingerprint()) == set(canary)
    _report("real sink of a pipeline run", tally)
