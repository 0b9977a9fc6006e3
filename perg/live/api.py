"""The sink's HTTP API: run status, metrics, guarded live SQL, comparison and the dashboard.

Every read runs in a worker thread on a cursor of its own. With a token configured, every route
but ``/health`` needs ``Authorization: Bearer <token>`` (the dashboard may instead be opened
once as ``/?token=<token>``, which sets a same-site cookie for the page and its event stream).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, cast, get_args

import duckdb
import orjson
from aiohttp import web

from perg.compare import CompareInputError, compare_runs
from perg.live.query import (
    FORMATS,
    QueryLimits,
    QueryTimeout,
    RowCapExceeded,
    StoreReader,
)
from perg.live.sqlguard import QueryRefused
from perg.metrics import Grouping
from perg.store import ResultStore

READER: web.AppKey[StoreReader] = web.AppKey("reader", StoreReader)
TOKEN: web.AppKey[str | None] = web.AppKey("token", str)
EVENT_INTERVAL_S: web.AppKey[float] = web.AppKey("event_interval_s", float)
STATIC_DIR = Path(str(resources.files("perg.live").joinpath("static")))
COOKIE = "perg_token"
_PUBLIC = frozenset({"/health"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_bind(bind: str, token: str | None) -> None:
    """Refuse to serve off the loopback interface without a bearer token."""
    if token:
        return
    try:
        loopback = bind == "localhost" or ipaddress.ip_address(bind).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"the sink API would bind to {bind!r}, which is not a loopback address, without a "
            "token: set PERG_SINK_TOKEN (clients send it as 'Authorization: Bearer <token>') "
            "or bind to 127.0.0.1"
        )


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=str), status=status, content_type="application/json"
    )


def _error(message: str, status: int) -> web.Response:
    return _json({"error": message}, status)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[TOKEN]
    if token is None or request.path in _PUBLIC:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    offered = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
    from_query = request.query.get("token") if request.path == "/" else None
    offered = offered or request.cookies.get(COOKIE) or from_query
    if offered is None or not hmac.compare_digest(offered.encode(), token.encode()):
        return _error("missing or wrong bearer token (Authorization: Bearer <token>)", 401)
    response = await handler(request)
    if from_query:
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
    return response


async def _in_thread(request: web.Request, call: Callable[[StoreReader], Any]) -> Any:
    return await asyncio.to_thread(call, request.app[READER])


async def health(_: web.Request) -> web.Response:
    return _json({"ok": True})


async def runs(request: web.Request) -> web.Response:
    return _json(await _in_thread(request, lambda r: r.statuses()))


async def run_status(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    found = await _in_thread(request, lambda r: r.statuses(run_id))
    return _json(found[0]) if found else _error(f"unknown run {run_id!r}", 404)


async def run_metrics(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    by = request.query.get("by", "source")
    if by not in get_args(Grouping):
        return _error(f"by must be one of {', '.join(get_args(Grouping))}, not {by!r}", 400)
    grouping = cast(Grouping, by)

    def read(reader: StoreReader) -> list[dict[str, Any]] | None:
        return reader.metrics(run_id, grouping) if reader.statuses(run_id) else None

    rows = await _in_thread(request, read)
    return _error(f"unknown run {run_id!r}", 404) if rows is None else _json(rows)


async def sql(request: web.Request) -> web.Response:
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError:
        body = None
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("sql"), str)
        or body.get("format", "json") not in FORMATS
    ):
        return _error(
            f'expected a JSON body {{"sql": "...", "format": one of {list(FORMATS)}}}', 400
        )
    query: str = body["sql"]
    fmt: str = body.get("format", "json")
    try:
        result = await _in_thread(request, lambda r: r.query(query))
    except QueryTimeout as exc:
        return _error(str(exc), 408)
    except (QueryRefused, RowCapExceeded) as exc:
        return _error(str(exc), 400)
    except duckdb.Error as exc:
        return _error(f"query failed: {exc}", 400)
    if fmt == "csv":
        return web.Response(text=result.to_csv(), content_type="text/csv")
    if fmt == "arrow":
        return web.Response(
            body=result.to_arrow_ipc(), content_type="application/vnd.apache.arrow.stream"
        )
    return web.Response(body=result.to_json(), content_type="application/json")


async def compare(request: web.Request) -> web.Response:
    baseline, candidate = request.query.get("baseline"), request.query.get("candidate")
    if not baseline or not candidate:
        return _error("give ?baseline=RUN&candidate=RUN", 400)
    try:
        result = await _in_thread(
            request,
            lambda r: compare_runs(
                r, baseline, candidate, allow_mismatch=request.query.get("allow_mismatch") == "1"
            ),
        )
    except CompareInputError as exc:
        return _error(str(exc), 400)
    return _json(result.as_dict())


def _snapshot(reader: StoreReader) -> dict[str, Any]:
    return {"runs": reader.statuses(), "metrics": reader.metrics(None)}


async def snapshot(request: web.Request) -> web.Response:
    return _json(await _in_thread(request, _snapshot))


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the run statuses and metrics whenever they change (checked each
    interval), and a comment line as keep-alive otherwise."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    last = b""
    while True:
        payload = orjson.dumps(await _in_thread(request, _snapshot), default=str)
        message = b": keep-alive\n\n" if payload == last else b"data: " + payload + b"\n\n"
        last = payload
        try:
            await response.write(message)
        except ConnectionResetError:
            return response
        await asyncio.sleep(request.app[EVENT_INTERVAL_S])


async def dashboard(_: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "dashboard.html")


def create_app(
    store: ResultStore,
    *,
    token: str | None,
    query_timeout_s: float | None = None,
    row_cap: int | None = None,
    event_interval_s: float = 1.0,
) -> web.Application:
    """The API over ``store``. Query limits default to ``PERG_SQL_TIMEOUT_S`` (10 s) and
    ``PERG_SQL_ROW_CAP`` (10,000 rows)."""
    configured = QueryLimits.from_settings()
    limits = QueryLimits(
        configured.timeout_s if query_timeout_s is None else query_timeout_s,
        configured.row_cap if row_cap is None else row_cap,
    )
    app = web.Application(middlewares=[_auth])
    app[READER] = StoreReader(store, limits)
    app[TOKEN] = token or None
    app[EVENT_INTERVAL_S] = event_interval_s
    app.router.add_get("/health", health)
    app.router.add_get("/api/runs", runs)
    app.router.add_get("/api/runs/{run_id}/status", run_status)
    app.router.add_get("/api/runs/{run_id}/metrics", run_metrics)
    app.router.add_get("/api/snapshot", snapshot)
    app.router.add_get("/api/compare", compare)
    app.router.add_post("/sql", sql)
    app.router.add_get("/events", events)
    app.router.add_get("/", dashboard)
    app.router.add_static("/static/", STATIC_DIR)
    return app
