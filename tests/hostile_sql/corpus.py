"""An attacker's corpus of live SQL: every entry must be refused (4xx / QueryRefused) or harmless.

``{canary}`` is a folder of bait files (a secret text file, a CSV, a Parquet file, a DuckDB file)
that no query may read or write; ``{url}`` is an HTTP URL (see :func:`Attack.text`). Each entry
is (category, name, sql, expectation): "refuse" means the guard must refuse it; "limit" means a
run-time limit (time, rows, bytes) must stop it with a 4xx; "harmless" means it may run, as long
as it changes nothing and leaks nothing (e.g. a CTE that merely shares a system table's name).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Expectation = Literal["refuse", "limit", "harmless"]


class Attack(NamedTuple):
    category: str
    name: str
    sql: str
    expect: Expectation = "refuse"
    # False: only the guard stops it (a scalar function building a value of the caller's size
    # outside DuckDB's memory accounting, or an uninterruptible sleep); never run it unguarded.
    engine_bounded: bool = True

    def text(self, canary: str, url: str = "http://127.0.0.1:9") -> str:
        return self.sql.replace("{canary}", canary).replace("{url}", url)


def _deep(n: int) -> str:
    return "SELECT " + "(" * n + "1" + ")" * n


CORPUS: tuple[Attack, ...] = (
    # -- writes and DDL, plain and hidden ------------------------------------------------------
    Attack("write", "insert", "INSERT INTO results (run_id) VALUES ('x')"),
    Attack("write", "update", "UPDATE results SET answer = 'A'"),
    Attack("write", "delete", "DELETE FROM results"),
    Attack("write", "truncate", "TRUNCATE results"),
    Attack("write", "drop table", "DROP TABLE results"),
    Attack("write", "drop view", "DROP VIEW outcomes"),
    Attack("write", "alter", "ALTER TABLE results ADD COLUMN x INT"),
    Attack("write", "create table as", "CREATE TABLE t AS SELECT * FROM results"),
    Attack("write", "create temp table", "CREATE TEMP TABLE t AS SELECT 1"),
    Attack("write", "create view", "CREATE OR REPLACE VIEW outcomes AS SELECT 1"),
    Attack("write", "create macro", "CREATE MACRO getenv2(x) AS x"),
    Attack("write", "create sequence", "CREATE SEQUENCE s"),
    Attack("write", "create index", "CREATE INDEX i ON results(run_id)"),
    Attack("write", "create type", "CREATE TYPE e AS ENUM ('a')"),
    Attack("write", "comment on", "COMMENT ON TABLE results IS 'x'"),
    Attack(
        "write",
        "delete in cte",
        "WITH d AS (DELETE FROM results RETURNING *) SELECT count(*) FROM d",
    ),
    Attack(
        "write", "unreferenced delete cte", "WITH d AS (DELETE FROM results RETURNING *) SELECT 1"
    ),
    Attack(
        "write",
        "insert in cte",
        "WITH i AS (INSERT INTO runs (run_id) VALUES ('evil') RETURNING *) SELECT * FROM i",
    ),
    Attack(
        "write",
        "update in cte",
        "WITH u AS (UPDATE runs SET model = 'evil' RETURNING *) SELECT count(*) FROM u",
    ),
    Attack(
        "write",
        "delete in nested cte",
        "SELECT * FROM (WITH d AS (DELETE FROM baselines RETURNING *) SELECT count(*) FROM d)",
    ),
    Attack(
        "write",
        "delete in scalar subquery cte",
        "SELECT (WITH d AS (DELETE FROM results RETURNING 1) SELECT count(*) FROM d)",
    ),
    Attack(
        "write",
        "delete in union",
        "SELECT 1 UNION ALL (WITH d AS (DELETE FROM results RETURNING 1) SELECT count(*) FROM d)",
    ),
    Attack(
        "write",
        "delete in exists",
        "SELECT 1 WHERE EXISTS (WITH d AS (DELETE FROM progress RETURNING 1) SELECT * FROM d)",
    ),
    Attack(
        "write",
        "delete in recursive cte",
        "WITH RECURSIVE d AS (DELETE FROM results RETURNING 1) SELECT * FROM d",
    ),
    Attack(
        "write",
        "delete in materialized cte",
        "WITH d AS MATERIALIZED (DELETE FROM results RETURNING 1) SELECT 1",
    ),
    Attack(
        "write",
        "insert select in cte",
        "WITH i AS (INSERT INTO dead_letters SELECT * FROM dead_letters RETURNING 1) SELECT 1",
    ),
    Attack("write", "nextval", "SELECT nextval('s')"),
    Attack("write", "setval", "SELECT setval('s', 5)"),
    Attack(
        "write",
        "merge",
        "MERGE INTO runs USING (SELECT 'x' AS run_id) s ON runs.run_id = s.run_id "
        "WHEN MATCHED THEN DELETE",
    ),
    # -- COPY, EXPORT, ATTACH, INSTALL, LOAD, SET, PRAGMA and other statements ------------------
    Attack("statement", "copy to", "COPY results TO '{canary}/leak.csv'"),
    Attack(
        "statement",
        "copy query to",
        "COPY (SELECT * FROM results) TO '{canary}/leak.parquet' (FORMAT parquet)",
    ),
    Attack(
        "statement",
        "copy in cte",
        "WITH c AS (COPY (SELECT 'pwned') TO '{canary}/pwned.csv' (FORMAT csv)) SELECT 1",
    ),
    Attack("statement", "copy from", "COPY results FROM '{canary}/bait.csv'"),
    Attack("statement", "export database", "EXPORT DATABASE '{canary}/export'"),
    Attack("statement", "import database", "IMPORT DATABASE '{canary}/export'"),
    Attack("statement", "attach file", "ATTACH '{canary}/other.duckdb' AS other"),
    Attack("statement", "attach new file", "ATTACH '{canary}/new.duckdb' AS n"),
    Attack("statement", "attach memory", "ATTACH ':memory:' AS m"),
    Attack("statement", "detach", "DETACH perg"),
    Attack("statement", "use", "USE memory"),
    Attack("statement", "install", "INSTALL httpfs"),
    Attack("statement", "load", "LOAD httpfs"),
    Attack("statement", "force install", "FORCE INSTALL httpfs FROM community"),
    Attack("statement", "set", "SET enable_external_access = true"),
    Attack("statement", "set threads", "SET threads = 1"),
    Attack("statement", "set lock", "SET lock_configuration = false"),
    Attack("statement", "reset", "RESET ALL"),
    Attack("statement", "set variable", "SET VARIABLE x = 1"),
    Attack("statement", "pragma version", "PRAGMA version"),
    Attack("statement", "pragma database_list", "PRAGMA database_list"),
    Attack("statement", "pragma enable_profiling", "PRAGMA enable_profiling = 'json'"),
    Attack("statement", "call", "CALL pragma_database_list()"),
    Attack("statement", "checkpoint", "CHECKPOINT"),
    Attack("statement", "checkpoint function", "SELECT * FROM checkpoint()"),
    Attack("statement", "force checkpoint function", "SELECT * FROM force_checkpoint()"),
    Attack("statement", "vacuum", "VACUUM results"),
    Attack("statement", "analyze", "ANALYZE"),
    Attack("statement", "begin", "BEGIN TRANSACTION"),
    Attack("statement", "commit", "COMMIT"),
    Attack("statement", "explain analyze", "EXPLAIN ANALYZE SELECT * FROM results"),
    Attack("statement", "create secret", "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')"),
    Attack("statement", "prepare", "PREPARE p AS SELECT 1"),
    Attack("statement", "pivot statement", "PIVOT results ON setting"),
    Attack(
        "statement", "pivot on an enum", "SELECT * FROM results PIVOT (count(*) FOR setting IN e)"
    ),
    Attack("statement", "enable logging", "SELECT * FROM enable_logging()"),
    # -- file and URL readers -------------------------------------------------------------------
    Attack("file", "read_csv", "SELECT * FROM read_csv('{canary}/bait.csv')"),
    Attack(
        "file",
        "read_csv_auto subquery",
        "SELECT (SELECT count(*) FROM read_csv_auto('/etc/passwd'))",
    ),
    Attack("file", "read_text", "SELECT * FROM read_text('{canary}/secret.txt')"),
    Attack(
        "file",
        "read_text scalar subquery",
        "SELECT (SELECT content FROM read_text('{canary}/secret.txt'))",
    ),
    Attack("file", "read_blob", "SELECT * FROM read_blob('{canary}/secret.txt')"),
    Attack("file", "read_json", "SELECT * FROM read_json('{canary}/bait.csv')"),
    Attack("file", "read_parquet", "SELECT * FROM read_parquet('{canary}/bait.parquet')"),
    Attack("file", "parquet_scan", "SELECT * FROM parquet_scan('{canary}/*.parquet')"),
    Attack("file", "parquet_metadata", "SELECT * FROM parquet_metadata('{canary}/bait.parquet')"),
    Attack("file", "replacement scan", "SELECT * FROM '{canary}/bait.csv'"),
    Attack("file", "replacement scan, FROM first", "FROM '{canary}/secret.txt'"),
    Attack("file", "quoted path table", 'SELECT * FROM "{canary}/bait.parquet"'),
    Attack(
        "file", "path in a join", "SELECT * FROM results JOIN '{canary}/bait.csv' USING (run_id)"
    ),
    Attack(
        "file",
        "path in a cte body",
        "WITH x AS (SELECT * FROM '{canary}/bait.csv') SELECT * FROM x",
    ),
    Attack("file", "glob", "SELECT * FROM glob('{canary}/*')"),
    Attack("file", "sniff_csv", "SELECT * FROM sniff_csv('{canary}/bait.csv')"),
    Attack("file", "read_duckdb", "SELECT * FROM read_duckdb('{canary}/other.duckdb')"),
    Attack("file", "describe a file", "DESCRIBE '{canary}/bait.csv'"),
    Attack("file", "summarize a file", "SUMMARIZE '{canary}/bait.parquet'"),
    Attack("file", "url reader", "SELECT * FROM read_csv('{url}/x.csv')"),
    Attack("file", "url replacement scan", "SELECT * FROM '{url}/x.parquet'"),
    Attack("file", "s3 url", "SELECT * FROM 's3://bucket/x.parquet'"),
    Attack("file", "query()", "SELECT * FROM query('SELECT * FROM read_text(''/etc/passwd'')')"),
    Attack("file", "query_table()", "SELECT * FROM query_table('{canary}/bait.csv')"),
    Attack(
        "file",
        "json_execute_serialized_sql",
        "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
    ),
    Attack("file", "getenv", "SELECT getenv('PERG_ATTACK_SECRET')"),
    Attack("file", "getenv uppercase", "SELECT \"GETENV\"('HOME')"),
    Attack("file", "getenv qualified", "SELECT main.getenv('HOME')"),
    Attack("file", "getenv as method", "SELECT 'HOME'.getenv()"),
    Attack("file", "getenv in lambda", "SELECT list_transform(['HOME'], lambda x: getenv(x))"),
    Attack(
        "file",
        "getenv in filter",
        "SELECT count(*) FILTER (WHERE getenv('HOME') IS NOT NULL) FROM results",
    ),
    Attack("file", "getenv in order by", "SELECT run_id FROM runs ORDER BY getenv('HOME')"),
    # -- system catalogs and settings -----------------------------------------------------------
    Attack("catalog", "duckdb_settings", "SELECT * FROM duckdb_settings()"),
    Attack(
        "catalog",
        "duckdb_settings in a subquery",
        "SELECT (SELECT value FROM duckdb_settings() WHERE name = 'temp_directory')",
    ),
    Attack("catalog", "pg_settings", "SELECT * FROM pg_settings"),
    Attack("catalog", "pg_catalog.pg_settings", "SELECT * FROM pg_catalog.pg_settings"),
    Attack("catalog", "current_setting", "SELECT current_setting('temp_directory')"),
    Attack(
        "catalog",
        "current_setting in where",
        "SELECT 1 FROM runs WHERE current_setting('threads') > 0",
    ),
    Attack("catalog", "information_schema.tables", "SELECT * FROM information_schema.tables"),
    Attack("catalog", "information_schema.columns", "SELECT * FROM information_schema.columns"),
    Attack("catalog", "duckdb_tables", "SELECT sql FROM duckdb_tables()"),
    Attack("catalog", "duckdb_tables view", "SELECT * FROM duckdb_tables"),
    Attack("catalog", "duckdb_views", "SELECT sql FROM duckdb_views()"),
    Attack("catalog", "duckdb_databases", "SELECT path FROM duckdb_databases()"),
    Attack("catalog", "duckdb_extensions", "SELECT * FROM duckdb_extensions()"),
    Attack("catalog", "duckdb_secrets", "SELECT * FROM duckdb_secrets()"),
    Attack("catalog", "duckdb_functions", "SELECT * FROM duckdb_functions()"),
    Attack("catalog", "duckdb_temporary_files", "SELECT * FROM duckdb_temporary_files()"),
    Attack("catalog", "sqlite_master", "SELECT * FROM sqlite_master"),
    Attack("catalog", "pg_class", "SELECT * FROM pg_class"),
    Attack("catalog", "system catalog", "SELECT * FROM system.main.duckdb_tables"),
    Attack("catalog", "catalog-qualified store table", "SELECT * FROM perg.main.results"),
    Attack("catalog", "schema-qualified store table", "SELECT * FROM main.results"),
    Attack("catalog", "pragma_table_info", "SELECT * FROM pragma_table_info('results')"),
    Attack("catalog", "pragma_database_size", "SELECT * FROM pragma_database_size()"),
    Attack("catalog", "pragma_version", "SELECT * FROM pragma_version()"),
    Attack("catalog", "version()", "SELECT version()"),
    Attack("catalog", "current_database", "SELECT current_database()"),
    Attack("catalog", "current_catalog word", "SELECT current_catalog"),
    Attack("catalog", "current_schemas", "SELECT current_schemas(true)"),
    Attack("catalog", "current_query", "SELECT current_query()"),
    Attack("catalog", "getvariable", "SELECT getvariable('x')"),
    Attack("catalog", "which_secret", "SELECT * FROM which_secret('s3://x', 's3')"),
    Attack("catalog", "show tables", "SHOW TABLES"),
    Attack("catalog", "show all tables", "SHOW ALL TABLES"),
    Attack("catalog", "show databases", "SHOW DATABASES"),
    Attack("catalog", "time travel", "SELECT * FROM results AT (VERSION => 1)"),
    Attack(
        "catalog", "json_serialize_plan", "SELECT json_serialize_plan('SELECT * FROM pg_settings')"
    ),
    Attack("catalog", "test_all_types", "SELECT * FROM test_all_types()"),
    # -- CTE shadowing ------------------------------------------------------------------------
    Attack(
        "cte",
        "later cte shadows pg_settings",
        "WITH a AS (SELECT * FROM pg_settings), pg_settings AS (SELECT 1) SELECT * FROM a",
    ),
    Attack(
        "cte",
        "later cte shadows duckdb_settings",
        "WITH a AS (SELECT * FROM duckdb_settings), duckdb_settings AS (SELECT 1) SELECT * FROM a",
    ),
    Attack(
        "cte",
        "self reference reads the system table",
        "WITH pg_settings AS (SELECT * FROM pg_settings) SELECT * FROM pg_settings",
    ),
    Attack(
        "cte",
        "recursive keyword, not recursive",
        "WITH RECURSIVE pg_settings AS (SELECT * FROM pg_settings) SELECT * FROM pg_settings",
    ),
    Attack(
        "cte",
        "cte scope leaks out of a subquery",
        "SELECT * FROM (WITH pg_class AS (SELECT 1) SELECT 1), pg_class",
    ),
    Attack(
        "cte",
        "anchor of a recursive cte",
        "WITH RECURSIVE pg_settings AS (SELECT name FROM pg_settings "
        "UNION ALL SELECT name FROM pg_settings) SELECT * FROM pg_settings",
    ),
    Attack(
        "cte",
        "cte named like a path",
        'WITH "{canary}/bait.csv" AS (SELECT 1) SELECT * FROM "{canary}/bait.csv"',
    ),
    Attack(
        "cte",
        "upper-case cte name shadows",
        'WITH "PG_SETTINGS" AS (SELECT 1 AS x) SELECT * FROM pg_settings',
        "harmless",
    ),
    Attack(
        "cte",
        "cte named like a system table",
        "WITH pg_settings AS (SELECT 1 AS x) SELECT * FROM pg_settings",
        "harmless",
    ),
    Attack(
        "cte",
        "cte named like a store table",
        "WITH results AS (SELECT 1 AS x) SELECT * FROM results",
        "harmless",
    ),
    # -- multiple statements and comments -----------------------------------------------------
    Attack("multi", "select then drop", "SELECT 1; DROP TABLE results"),
    Attack("multi", "select then select", "SELECT 1; SELECT 2"),
    Attack("multi", "comment hides nothing", "SELECT 1 /* ; DROP TABLE results */", "harmless"),
    Attack("multi", "line comment then statement", "SELECT 1 -- comment\n; DELETE FROM results"),
    Attack("multi", "statement after a block comment", "/* SELECT */ DELETE FROM results"),
    Attack("multi", "semicolon in a string", "SELECT ';DROP TABLE results;' AS s", "harmless"),
    Attack("multi", "unterminated comment", "SELECT 1 /* DROP TABLE results"),
    Attack("multi", "empty", ""),
    Attack("multi", "only a comment", "-- nothing"),
    Attack("multi", "not sql", "this is not sql"),
    Attack("multi", "nul byte", "SELECT 1\x00; DROP TABLE results"),
    Attack("multi", "parameter", "SELECT * FROM results WHERE run_id = $1"),
    # -- resource exhaustion ------------------------------------------------------------------
    Attack(
        "resource",
        "endless cross join",
        "SELECT count(*) FROM range(1000000000000) a, results",
        "limit",
    ),
    Attack(
        "resource",
        "endless recursion",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
        "limit",
    ),
    Attack("resource", "too many rows", "SELECT * FROM range(100000000)", "limit"),
    Attack(
        "resource",
        "huge answer under the row cap",
        "SELECT string_agg('0123456789abcdef', '') AS r FROM range(2000000)",
        "limit",
    ),
    Attack("resource", "repeat", "SELECT repeat('x', 2000000000)", engine_bounded=False),
    Attack("resource", "lpad", "SELECT lpad('x', 2000000000, 'y')", engine_bounded=False),
    Attack("resource", "list range", "SELECT length(range(2000000000))", engine_bounded=False),
    Attack("resource", "printf width", "SELECT printf('%2000000000d', 1)", engine_bounded=False),
    Attack(
        "resource", "printf star width", "SELECT printf('%*d', 2000000000, 1)", engine_bounded=False
    ),
    Attack(
        "resource",
        "format nested width",
        "SELECT format('{:>{}}', 'x', 2000000000)",
        engine_bounded=False,
    ),
    Attack("resource", "sleep", "SELECT sleep_ms(100000)", engine_bounded=False),
    Attack("resource", "deep brackets", _deep(300)),
    Attack("resource", "deeper brackets", _deep(5000)),
    Attack("resource", "deep NOT chain", "SELECT " + "NOT " * 900 + "true"),
    Attack("resource", "deep plus chain", "SELECT " + "+".join(["1"] * 900)),
    Attack(
        "resource", "deep subqueries", "SELECT * FROM " + "(FROM " * 100 + "results" + ")" * 100
    ),
    Attack(
        "resource",
        "deep but allowed subqueries",
        "SELECT * FROM " + "(SELECT * FROM " * 40 + "results" + ")" * 40,
        "harmless",
    ),
    Attack("resource", "deep case", "SELECT " + "CASE WHEN true THEN " * 400 + "1" + " END" * 400),
    Attack("resource", "long text", "SELECT 1 " + "-- padding\n" * 5000),
)
