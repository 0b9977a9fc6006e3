"""The sink's HTTP API: routes, live SQL while rows arrive, limits, the token, SinkClient."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fixtures.live.runs import fails, make_spec, verdicts, write_run

from perg.cli import main
from perg.cli.client import SinkClient, SinkError, SinkUnavailable
from perg.config import Settings, load_settings
from services.sink.live.api import check_bind, create_app
from services.sink.live.query import LIVE_QUERY_SWITCH_INTERVAL_S, QueryLimits, favour_live_queries
from services.sink.store import ResultStore

ROWS_PER_BATCH = 7
CELLS = 4  # 2 settings x 2 methods in make_spec
TOKEN = "a-test-token-of-32-characters-xx"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    store = ResultStore(tmp_path / "perg.duckdb")
    write_run(store, make_spec("base", 30), pref_wrong=fails("a", 20), unfollowed=fails("f", 10))
    yield store
    store.close()


async def _client(store: ResultStore, **kwargs: object) -> TestClient:
    client = TestClient(TestServer(create_app(store, **kwargs)))  # type: ignore[arg-type]
    await client.start_server()
    return client


@pytest.fixture
async def api(store: ResultStore) -> AsyncIterator[TestClient]:
    client = await _client(store, token=None, limits=QueryLimits(timeout_s=2.0, row_cap=1000))
    yield client
    await client.close()


async def test_health_runs_status_and_metrics(api: TestClient) -> None:
    assert (await (await api.get("/health")).json()) == {"ok": True}
    runs = await (await api.get("/api/runs")).json()
    assert [r["run_id"] for r in runs] == ["base"] and runs[0]["done"] is True
    status = await (await api.get("/api/runs/base/status")).json()
    assert status["results_stored"] == 30 * CELLS
    assert (await api.get("/api/runs/nope/status")).status == 404
    assert (await api.get("/api/runs/nope/metrics")).status == 404
    assert (await api.get("/api/runs/base/metrics?by=colour")).status == 400
    rows = await (await api.get("/api/runs/base/metrics")).json()
    assert {r["source"] for r in rows} >= {"full", "cais/mmlu"}
    full = [r for r in rows if r["source"] == "full" and r["setting"] == "relevant"]
    assert all(r["BR_lo"] <= r["BR"] <= r["BR_hi"] for r in full)
    by_subject = await (await api.get("/api/runs/base/metrics?by=subject")).json()
    assert {r["category"] for r in by_subject} == {"astronomy", "virology"}


async def test_sql_formats(api: TestClient) -> None:
    query = "SELECT setting, count(*) AS n FROM results GROUP BY setting ORDER BY setting"
    body = await (await api.post("/sql", json={"sql": query})).json()
    assert body == {
        "columns": ["setting", "n"],
        "rows": [["irrelevant", 60], ["relevant", 60]],
        "truncated": False,
    }
    csv = await (await api.post("/sql", json={"sql": query, "format": "csv"})).text()
    assert csv == "setting,n\nirrelevant,60\nrelevant,60\n"
    response = await api.post("/sql", json={"sql": query, "format": "arrow"})
    table = pa.ipc.open_stream(await response.read()).read_all()
    assert table.to_pydict() == {"setting": ["irrelevant", "relevant"], "n": [60, 60]}
    assert (await api.post("/sql", json={"sql": query, "format": "xml"})).status == 400
    assert (await api.post("/sql", data=b"not json")).status == 415
    bad = await api.post("/sql", data=b"not json", headers={"Content-Type": "application/json"})
    assert bad.status == 400


async def test_sql_refusals_and_errors_are_400_with_a_message(api: TestClient) -> None:
    response = await api.post("/sql", json={"sql": "DROP TABLE results"})
    assert response.status == 400
    assert "only SELECT" in (await response.json())["error"]
    response = await api.post("/sql", json={"sql": "SELECT no_such_column FROM results"})
    assert response.status == 400 and "query failed" in (await response.json())["error"]


async def test_timeout_and_row_cap(api: TestClient) -> None:
    slow = "SELECT count(*) FROM range(100000000000) a, results"
    response = await api.post("/sql", json={"sql": slow})
    assert response.status == 408
    assert "2 s" in (await response.json())["error"]
    response = await api.post("/sql", json={"sql": "SELECT * FROM range(1001)"})
    assert response.status == 400
    assert "more than 1000 rows" in (await response.json())["error"]
    ok = await (await api.post("/sql", json={"sql": "SELECT * FROM range(1000)"})).json()
    assert len(ok["rows"]) == 1000


async def test_queries_see_whole_batches_while_rows_arrive(store: ResultStore) -> None:
    """A writer stores batches of ROWS_PER_BATCH rows (each with its baseline and 4 results) in
    one transaction each; concurrent queries must only ever see whole batches."""
    spec = make_spec("live", 2000)
    store.save_run(spec)
    stop = threading.Event()

    def writer() -> None:
        for start in range(0, 2000, ROWS_PER_BATCH):
            if stop.is_set():
                return
            rows = range(start, min(start + ROWS_PER_BATCH, 2000))
            store.save_verdicts(verdicts(spec, rows, pref_wrong=fails("x", 30)))

    client = await _client(store, token=None)
    thread = threading.Thread(target=writer)
    thread.start()
    seen = []
    query = (
        "SELECT (SELECT count(*) FROM results WHERE run_id = 'live'), "
        "(SELECT count(*) FROM baselines WHERE run_id = 'live'), "
        "(SELECT count(*) FROM outcomes WHERE run_id = 'live')"
    )
    try:
        while thread.is_alive() and len(seen) < 200:
            answers = await asyncio.gather(
                *(client.post("/sql", json={"sql": query}) for _ in range(4))
            )
            for response in answers:
                ((results, baselines, outcomes),) = (await response.json())["rows"]
                seen.append(results)
                assert results % (ROWS_PER_BATCH * CELLS) == 0
                assert baselines * CELLS == results == outcomes
    finally:
        stop.set()
        thread.join()
        await client.close()
    assert len({n for n in seen}) > 2, "the queries should have overlapped the writes"


async def test_token_required_when_set(store: ResultStore) -> None:
    client = await _client(store, token=TOKEN)
    try:
        assert (await client.get("/health")).status == 200
        for path in ("/api/runs", "/", "/static/dashboard.js", "/events"):
            assert (await client.get(path)).status == 401, path
        assert (await client.post("/sql", json={"sql": "SELECT 1"})).status == 401
        wrong = {"Authorization": "Bearer nope-nope-nope-nope"}
        assert (await client.get("/api/runs", headers=wrong)).status == 401
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/api/runs", headers=right)).status == 200
        response = await client.post("/sql", json={"sql": "SELECT 1 AS x"}, headers=right)
        assert (await response.json())["rows"] == [[1]]
        assert (await client.get(f"/api/runs?token={TOKEN}")).status == 401  # page only
        page = await client.get(f"/?token={TOKEN}")  # opening the dashboard sets a cookie
        assert page.status == 200
        assert (await client.get("/api/runs")).status == 200
    finally:
        await client.close()


@pytest.mark.parametrize("bind", ["0.0.0.0", "192.168.1.5", "::", "example.org", ""])
def test_check_bind_refuses_non_loopback_without_token(bind: str) -> None:
    with pytest.raises(ValueError, match="PERG_SINK_TOKEN"):
        check_bind(bind, None)
    check_bind(bind, TOKEN)


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_check_bind_allows_loopback(bind: str) -> None:
    check_bind(bind, None)


async def test_compare_endpoint(store: ResultStore, api: TestClient) -> None:
    write_run(store, make_spec("cand", 30), pref_wrong=fails("a", 40), unfollowed=fails("f", 10))
    body = await (await api.get("/api/compare?reference=base&candidate=cand")).json()
    assert body["test"].startswith("McNemar")
    assert body["reference"]["run_id"] == "base" and body["candidate"]["run_id"] == "cand"
    assert {c["metric"] for c in body["cells"]} == {"BR", "AFR", "RER", "PVR"}
    assert all("reference" in c and "baseline" not in c for c in body["cells"])
    response = await api.get("/api/compare?reference=base&candidate=nope")
    assert response.status == 400 and "unknown run" in (await response.json())["error"]
    # baseline= is the deprecated alias of reference=: same answer, never both at once
    alias = await (await api.get("/api/compare?baseline=base&candidate=cand")).json()
    assert alias == body
    response = await api.get("/api/compare?reference=base&baseline=base&candidate=cand")
    assert response.status == 400 and "reference=" in (await response.json())["error"]
    response = await api.get("/api/compare?candidate=cand")
    assert response.status == 400
    assert "?reference=RUN&candidate=RUN" in (await response.json())["error"]


async def test_events_stream_a_snapshot(api: TestClient) -> None:
    response = await api.get("/events")
    line = await asyncio.wait_for(response.content.readline(), 5)
    assert line.startswith(b"data: {") and b'"run_id":"base"' in line
    response.close()


async def test_snapshot_carries_noise_floor_and_extractor_agreement(api: TestClient) -> None:
    """The dashboard's feed: metric rows with their noise BR, and one agreement row per run
    read by a model extractor (none here: the fixture runs use the rules parser)."""
    response = await api.get("/api/snapshot")
    assert response.status == 200
    body = await response.json()
    assert body["metrics"] and all("noise_BR" in row for row in body["metrics"])
    assert body["agreement"] == []
    per_run = await api.get("/api/runs/base/agreement")
    assert (per_run.status, await per_run.json()) == (200, [])
    assert (await api.get("/api/runs/nope/agreement")).status == 404


def _settings(tmp_path: Path, url: str, token: str | None = None) -> Settings:
    return dataclasses.replace(
        load_settings(), sink_url=url, sink_token=token, db=tmp_path / "perg.duckdb"
    )


async def test_sink_client_over_http(store: ResultStore, tmp_path: Path) -> None:
    client = await _client(store, token=TOKEN)
    try:
        sink = SinkClient(_settings(tmp_path, str(client.make_url("")), TOKEN))
        statuses = await asyncio.to_thread(sink.statuses)
        assert [s["run_id"] for s in statuses] == ["base"]
        assert await asyncio.to_thread(sink.status, "nope") is None
        metrics = await asyncio.to_thread(sink.metrics, "base")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        served = await client.get("/api/runs/base/metrics", headers=auth)
        assert metrics == await served.json()
        answer = await asyncio.to_thread(sink.sql, "SELECT count(*) AS n FROM baselines")
        assert answer["rows"] == [[30]]
        with pytest.raises(SinkError, match="only SELECT"):
            await asyncio.to_thread(sink.sql, "DELETE FROM results")
        anonymous = SinkClient(_settings(tmp_path, str(client.make_url(""))))
        with pytest.raises(SinkError, match="401"):
            await asyncio.to_thread(anonymous.statuses)
    finally:
        await client.close()


def test_sink_client_reads_the_file_when_no_sink_answers(
    store: ResultStore, tmp_path: Path
) -> None:
    store.close()  # the sink is gone; its file stays
    sink = SinkClient(_settings(tmp_path, "http://127.0.0.1:9"))
    assert [s["run_id"] for s in sink.statuses()] == ["base"]
    assert sink.sql("SELECT count(*) FROM results")["rows"] == [[120]]
    assert any(r["source"] == "full" for r in sink.metrics("base"))
    with pytest.raises(SinkError, match="not allowed"):
        sink.sql("SELECT getenv('HOME')")
    missing = SinkClient(
        dataclasses.replace(_settings(tmp_path, "http://127.0.0.1:9"), db=tmp_path / "none.db")
    )
    with pytest.raises(SinkError, match="does not exist"):
        missing.statuses()


def test_perg_sql_command(
    store: ResultStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    store.close()
    monkeypatch.setenv("PERG_DB", str(tmp_path / "perg.duckdb"))
    monkeypatch.setenv("PERG_SINK_URL", "http://127.0.0.1:9")
    query = "SELECT run_id, count(*) AS n FROM results GROUP BY run_id"
    assert main(["sql", query]) == 0
    table = capsys.readouterr().out
    assert "run_id" in table and "base" in table and "120" in table
    assert main(["sql", "--format", "csv", query]) == 0
    assert capsys.readouterr().out == "run_id,n\nbase,120\n"
    assert main(["sql", "--format", "json", query]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == [["base", 120]]
    assert main(["sql", "COPY results TO '/tmp/x.csv'"]) == 2
    assert "only SELECT" in capsys.readouterr().err


# -- hostile requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8765", "127.0.0.1.evil.example", "localhost.evil.example", ""],
)
async def test_foreign_host_refused_without_token(api: TestClient, host: str) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    for method, path in (("GET", "/api/runs"), ("POST", "/sql"), ("GET", "/")):
        response = await api.request(method, path, json={"sql": "SELECT 1"}, headers={"Host": host})
        assert response.status == 421, (host, path)
        assert "PERG_SINK_PUBLIC_HOSTS" in (await response.json())["error"]


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8765", "localhost", "LOCALHOST:1", "[::1]:8765", "127.1.2.3"]
)
async def test_loopback_hosts_accepted(api: TestClient, host: str) -> None:
    assert (await api.get("/api/runs", headers={"Host": host})).status == 200


async def test_public_host_names_are_configured(store: ResultStore) -> None:
    client = await _client(store, token=None, public_hosts=frozenset({"perg.example.org"}))
    try:
        ok = await client.get("/api/runs", headers={"Host": "perg.example.org:8765"})
        assert ok.status == 200
        assert (await client.get("/api/runs", headers={"Host": "other.example"})).status == 421
    finally:
        await client.close()


async def test_cross_origin_browser_requests_refused(api: TestClient) -> None:
    host = api.make_url("").host
    port = api.make_url("").port
    same = f"http://{host}:{port}"
    sql = {"sql": "SELECT 1 AS x"}
    assert (await api.post("/sql", json=sql, headers={"Origin": same})).status == 200
    for origin in ("http://evil.example", "null", f"http://{host}:{port + 1}", "file://"):
        response = await api.post("/sql", json=sql, headers={"Origin": origin})
        assert response.status == 403, origin
    cross = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}
    assert (await api.get("/api/runs", headers=cross)).status == 403
    navigate = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert (await api.get("/", headers=navigate)).status == 200  # a link to the dashboard


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""],
)
async def test_post_needs_json_content_type(api: TestClient, content_type: str) -> None:
    """A cross-site <form> can post text/plain or form bodies without a CORS preflight."""
    body = json.dumps({"sql": "SELECT 1"}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    response = await api.post("/sql", data=body, headers=headers)
    assert response.status == 415
    assert "application/json" in (await response.json())["error"]


@pytest.mark.parametrize("token", ["x", "short-token", "15-characters!!"])
def test_short_tokens_refused_at_start(store: ResultStore, token: str) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        create_app(store, token=token)
    with pytest.raises(ValueError, match="at least 16"):
        check_bind("127.0.0.1", token)


async def test_byte_cap_besides_the_row_cap(store: ResultStore) -> None:
    client = await _client(store, token=None, limits=QueryLimits(max_bytes=10_000))
    try:
        big = "SELECT response FROM results, range(50)"  # few rows, long text
        response = await client.post("/sql", json={"sql": big + " LIMIT 20"})
        assert response.status == 200
        response = await client.post(
            "/sql", json={"sql": "SELECT string_agg(response, '') FROM results, range(100)"}
        )
        assert response.status == 400
        assert "PERG_SQL_MAX_BYTES" in (await response.json())["error"]
    finally:
        await client.close()


async def test_request_body_size_capped(api: TestClient) -> None:
    huge = {"sql": "SELECT 1 -- " + "x" * 400_000}
    assert (await api.post("/sql", json=huge)).status == 413


async def test_engine_errors_are_4xx_without_catalog_hints(api: TestClient) -> None:
    response = await api.post("/sql", json={"sql": "SELECT nope FROM results"})
    assert response.status == 400
    error = (await response.json())["error"]
    assert "nope" in error and "LINE 1" not in error and "Did you mean" not in error
    response = await api.post("/sql", json={"sql": "SELECT DATE '290309-12-22' - 1000000000"})
    assert response.status < 500


async def test_the_sink_database_is_hardened(store: ResultStore, api: TestClient) -> None:
    """create_app locks the database: no file access even for the sink's own connection."""
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        store.con.execute("SELECT * FROM read_text('/etc/hostname')")
    with pytest.raises(duckdb.Error, match="locked"):
        store.con.execute("SET enable_external_access = true")
    write_run(store, make_spec("after", 3))  # the sink's writes still work
    assert (await api.get("/api/runs/after/status")).status == 200


def test_fallback_reader_never_holds_the_file(store: ResultStore, tmp_path: Path) -> None:
    """perg status polling the file must not keep a restarted sink from its write lock."""
    store.close()
    db = tmp_path / "perg.duckdb"
    sink = SinkClient(_settings(tmp_path, "http://127.0.0.1:9"))
    writer = [
        sys.executable,
        "-c",
        "import duckdb, sys; duckdb.connect(sys.argv[1]).close()",
        str(db),
    ]
    for _ in range(3):
        assert [s["run_id"] for s in sink.statuses()] == ["base"]
        taken = subprocess.run(writer, capture_output=True, text=True, timeout=60)
        assert taken.returncode == 0, taken.stderr  # the file is free right after each call


def test_fallback_warns_that_the_file_may_be_stale(
    store: ResultStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store.close()
    sink = SinkClient(_settings(tmp_path, "http://127.0.0.1:9"))
    sink.statuses()
    sink.statuses()
    err = capsys.readouterr().err
    assert err.count("may be stale") == 1 and str(tmp_path / "perg.duckdb") in err


def test_fallback_while_another_process_holds_the_file(tmp_path: Path) -> None:
    """A sink starting up holds the lock before it serves: that is 'unavailable', not fatal."""
    db = tmp_path / "perg.duckdb"
    ResultStore(db).close()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
         "sys.stdin.read()",
         str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        sink = SinkClient(_settings(tmp_path, "http://127.0.0.1:9"))
        with pytest.raises(SinkUnavailable, match="holds"):
            sink.statuses()
    finally:
        holder.communicate("", timeout=30)


def test_live_api_shortens_the_switch_interval_and_never_lengthens_it(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_to: list[float] = []
    monkeypatch.setattr(sys, "setswitchinterval", set_to.append)
    monkeypatch.setattr(sys, "getswitchinterval", lambda: 0.005)  # the interpreter's default
    create_app(store, token=TOKEN)
    monkeypatch.setattr(sys, "getswitchinterval", lambda: 0.0001)  # already shorter
    favour_live_queries()
    assert set_to == [LIVE_QUERY_SWITCH_INTERVAL_S, 0.0001]
