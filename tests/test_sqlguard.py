"""Live SQL is read-only by construction: every write, attach, setting or file access is refused."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from fixtures.live.runs import make_spec, write_run

from services.sink.live.engine import harden
from services.sink.live.query import QueryLimits, StoreReader
from services.sink.live.snapshots import write_snapshot
from services.sink.live.sqlguard import QueryRefused
from services.sink.store import ResultStore


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreReader]:
    folder = tmp_path_factory.mktemp("guard")
    store = ResultStore(folder / "perg.duckdb")
    write_run(store, make_spec("r1", 12))
    write_snapshot(store, folder / "snapshots")
    (folder / "outside.csv").write_text("a,b\n1,2\n")
    with closing(store.cursor()) as con:
        harden(con)
    yield StoreReader(store, QueryLimits())
    store.close()


def _folder(reader: StoreReader) -> Path:
    assert isinstance(reader.db, ResultStore)
    return reader.db.path.parent


ATTEMPTS = {
    "insert": "INSERT INTO results (run_id) VALUES ('x')",
    "update": "UPDATE results SET answer = 'A'",
    "delete": "DELETE FROM results",
    "create table": "CREATE TABLE t AS SELECT 1",
    "create view": "CREATE VIEW v AS SELECT 1",
    "create macro": "CREATE MACRO m(x) AS x",
    "drop": "DROP TABLE results",
    "alter": "ALTER TABLE results ADD COLUMN x INT",
    "truncate": "TRUNCATE results",
    "attach": "ATTACH '{folder}/other.duckdb' AS other",
    "detach": "DETACH perg",
    "use": "USE memory",
    "copy to": "COPY results TO '{folder}/leak.csv'",
    "copy query to": "COPY (SELECT * FROM results) TO '{folder}/leak.csv'",
    "copy from": "COPY results FROM '/etc/passwd'",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set": "SET threads = 1",
    "set variable": "SET VARIABLE x = 1",
    "reset": "RESET threads",
    "pragma": "PRAGMA version",
    "pragma table_info": "PRAGMA table_info('results')",
    "call": "CALL pragma_version()",
    "checkpoint": "CHECKPOINT",
    "vacuum": "VACUUM",
    "analyze": "ANALYZE",
    "begin": "BEGIN TRANSACTION",
    "explain analyze": "EXPLAIN ANALYZE SELECT * FROM results",
    "export database": "EXPORT DATABASE '{folder}/export'",
    "import database": "IMPORT DATABASE '{folder}/export'",
    "create secret": "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')",
    "pivot statement": "PIVOT results ON setting",
    "multiple statements": "SELECT 1; DROP TABLE results",
    "select then select": "SELECT 1; SELECT 2",
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "read_csv_auto in subquery": "SELECT (SELECT count(*) FROM read_csv_auto('/etc/passwd'))",
    "read_text": "SELECT * FROM read_text('/etc/passwd')",
    "read_blob": "SELECT * FROM read_blob('/etc/passwd')",
    "read_json": "SELECT * FROM read_json('/etc/hostname')",
    "replacement scan": "SELECT * FROM '/etc/passwd'",
    "replacement scan, FROM first": "FROM '/etc/passwd'",
    "quoted path": 'SELECT * FROM "/etc/passwd"',
    "csv outside": "SELECT * FROM '{folder}/outside.csv'",
    "read_parquet outside": "SELECT * FROM read_parquet('/tmp/*.parquet')",
    "read_parquet of a snapshot": "SELECT * FROM read_parquet('{folder}/snapshots/runs.parquet')",
    "parquet replacement scan": "SELECT * FROM '{folder}/snapshots/results.parquet'",
    "glob": "SELECT * FROM glob('/etc/*')",
    "sniff_csv": "SELECT * FROM sniff_csv('/etc/passwd')",
    "parquet_metadata": "SELECT * FROM parquet_metadata('{folder}/snapshots/runs.parquet')",
    "query()": "SELECT * FROM query('SELECT 1')",
    "query_table()": "SELECT * FROM query_table('results')",
    "duckdb_settings": "SELECT * FROM duckdb_settings()",
    "duckdb_secrets": "SELECT * FROM duckdb_secrets()",
    "getenv": "SELECT getenv('HOME')",
    "getenv in where": "SELECT run_id FROM results WHERE getenv('HOME') IS NOT NULL",
    "getenv qualified": "SELECT main.getenv('HOME')",
    "getenv as method": "SELECT 'HOME'.getenv()",
    "getenv in a lambda": "SELECT list_transform(['HOME'], lambda x: getenv(x))",
    "current_setting": "SELECT current_setting('threads')",
    "nextval": "SELECT nextval('s')",
    "json_execute_serialized_sql": (
        "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))"
    ),
    "other catalog": "SELECT * FROM system.main.duckdb_tables",
    "information_schema": "SELECT * FROM information_schema.tables",
    "unknown table": "SELECT * FROM secrets",
    "cte path name": 'WITH "/etc/passwd" AS (SELECT 1) SELECT * FROM "/etc/passwd"',
    "cte out of scope": "SELECT * FROM (WITH x AS (SELECT 1) SELECT 1), x",
    "show": "SHOW TABLES",
    "summarize a file": "SUMMARIZE '/etc/passwd'",
    "describe a file": "DESCRIBE '{folder}/outside.csv'",
    "not sql": "this is not sql",
}


@pytest.mark.parametrize("name", list(ATTEMPTS))
def test_refused(reader: StoreReader, name: str) -> None:
    query = ATTEMPTS[name].format(folder=_folder(reader))
    before = reader.sql("SELECT count(*) FROM results")
    with pytest.raises(QueryRefused) as refused:
        reader.query(query)
    assert str(refused.value)  # a message that says why
    assert reader.sql("SELECT count(*) FROM results") == before
    assert not (_folder(reader) / "leak.csv").exists()
    assert not (_folder(reader) / "export").exists()


ALLOWED = [
    "SELECT * FROM results",
    "FROM outcomes SELECT run_id, row_id LIMIT 3",
    "SELECT * FROM metrics_by_source WHERE source = 'full'",
    "SELECT * FROM metrics_by_preference",
    "SELECT * FROM metrics_by_subject",
    "WITH t AS (SELECT run_id FROM results) SELECT count(*) FROM t",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
    "SELECT * FROM range(3), generate_series(1, 2)",
    "SELECT unnest([1, 2])",
    "SELECT * FROM unnest([1, 2])",
    "SELECT * FROM (VALUES (1), (2)) v(x)",
    "SELECT r.* FROM results r JOIN baselines b USING (run_id, row_id)",
    "SELECT * FROM results PIVOT (count(*) FOR setting IN ('relevant', 'irrelevant'))",
    "SELECT list_transform([1, 2], lambda x: x + 1)",
    "DESCRIBE results",
    "SUMMARIZE SELECT latency_s FROM results",
    "SELECT 1 UNION ALL SELECT 2",
    "SELECT current_date, now()",
]


@pytest.mark.parametrize("query", ALLOWED)
def test_allowed(reader: StoreReader, query: str) -> None:
    result = reader.query(query)
    assert result.columns


def test_refusal_names_the_known_tables(reader: StoreReader) -> None:
    with pytest.raises(QueryRefused, match=r"unknown table '/etc/passwd'.*results"):
        reader.query("FROM '/etc/passwd'")
