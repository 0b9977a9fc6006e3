"""The sink's HTTP API: run status, metrics, guarded live SQL, comparison and the dashboard.

Every read runs in a worker thread on a fresh cursor in a read-only transaction. Requests are
hostile input, checked before any handler runs:

* ``Host`` must name a loopback address (``localhost``, ``127.0.0.1``, ``[::1]``, ...) or one of
  ``PERG_SINK_PUBLIC_HOSTS`` (always checked when no token is set: DNS rebinding);
* a browser request from another origin (``Origin`` not this server's, ``Sec-Fetch-Site:
  cross-site`` other than a page navigation) is refused (cross-site form posts, fetches);
* ``POST`` bodies must be ``application/json``;
* with a token configured (at least 16 characters), every route but ``/health`` needs
  ``Authorization: Bearer <token>`` (the dashboard may instead be opened once as
  ``/?token=<token>``, which sets a same-site cookie for the page and its event stream).

Refused or failing SQL answers 4xx with ``{"error": ...}``, never 500.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from contextlib import closing
from importlib import resources
from pathlib import Path
from typing import Any, cast, get_args

import duckdb
import orjson
from aiohttp import web

from perg.compare import CompareInputError, compare_runs
from perg.metrics import Grouping
from perg.observe import Metrics
from services.sink.live.engine import EngineRefused, harden
from services.sink.live.query import (
    FORMATS,
    QueryLimits,
    QueryTimeout,
    ResultTooLarge,
    RowCapExceeded,
    StoreReader,
    favour_live_queries,
)
from services.sink.live.rows import (
    NotFound,
    QuestionBook,
    RowQueryError,
    parse_changed_filter,
    parse_row_filter,
)
from services.sink.live.sqlguard import QueryRefused
from services.sink.store import ResultStore

log = logging.getLogger("perg.live.api")

READER: web.AppKey[StoreReader] = web.AppKey("reader", StoreReader)
TOKEN: web.AppKey[str | None] = web.AppKey("token", str)
PUBLIC_HOSTS: web.AppKey[frozenset[str]] = web.AppKey("public_hosts", frozenset)
SQL_SLOTS: web.AppKey[asyncio.Semaphore] = web.AppKey("sql_slots", asyncio.Semaphore)
EVENT_INTERVAL_S: web.AppKey[float] = web.AppKey("event_interval_s", float)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
STATIC_DIR = Path(str(resources.files("services.sink.live").joinpath("static")))
COOKIE = "perg_token"
MIN_TOKEN_CHARS = 16
MAX_CONCURRENT_SQL = 4
MAX_REQUEST_BYTES = 256 * 1024
DEFAULT_LIMITS = QueryLimits()
_PUBLIC = frozenset({"/health"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_token(token: str | None) -> None:
    """Refuse a bearer token shorter than :data:`MIN_TOKEN_CHARS` (an empty one means none)."""
    if token and len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"PERG_SINK_TOKEN is {len(token)} characters long; a token must have at least "
            f"{MIN_TOKEN_CHARS} (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(bind: str, token: str | None) -> None:
    """Refuse a short token, and serving off the loopback interface without a token."""
    check_token(token)
    if token:
        return
    if not _is_loopback(bind):
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


def _host_name(host: str) -> str:
    """``host`` of a Host header or an origin's authority, without port and brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@web.middleware
async def _check_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host, Origin and content-type checks (see the module docstring)."""
    host = request.headers.get("Host", "")
    allowed_hosts = request.app[PUBLIC_HOSTS]
    name = _host_name(host)
    if (request.app[TOKEN] is None or allowed_hosts) and not (
        _is_loopback(name) or name in allowed_hosts
    ):
        return _error(
            f"Host {host!r} is not this server's: use a loopback address, or add the name to "
            "PERG_SINK_PUBLIC_HOSTS",
            421,
        )
    origin = request.headers.get("Origin")
    if origin is not None:
        authority = origin.split("://", 1)[1] if "://" in origin else ""
        if authority.lower() != host.lower() and _host_name(authority) not in allowed_hosts:
            return _error(f"requests from origin {origin!r} are not allowed", 403)
    fetch_site = request.headers.get("Sec-Fetch-Site")
    navigation = request.method == "GET" and request.headers.get("Sec-Fetch-Mode") == "navigate"
    if fetch_site == "cross-site" and not navigation:
        return _error("cross-site requests are not allowed", 403)
    if request.method == "POST" and request.content_type != "application/json":
        return _error("POST bodies must be JSON (Content-Type: application/json)", 415)
    return await handler(request)


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


async def run_agreement(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]

    def read(reader: StoreReader) -> list[dict[str, Any]] | None:
        return reader.agreement(run_id) if reader.statuses(run_id) else None

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
    slots = request.app[SQL_SLOTS]
    if slots.locked():
        return _error(f"{MAX_CONCURRENT_SQL} queries are running already; retry shortly", 429)
    async with slots:
        with request.app[METRICS].live_query_seconds.time():
            return await _run_sql(request, query, fmt)


async def _run_sql(request: web.Request, query: str, fmt: str) -> web.Response:
    """The answer to ``query``, or a 4xx with the reason (never a 500)."""
    try:
        response: web.Response = await _in_thread(request, lambda r: _answer(r, query, fmt))
        return response
    except QueryTimeout as exc:
        return _error(str(exc), 408)
    except (QueryRefused, EngineRefused, RowCapExceeded, ResultTooLarge) as exc:
        return _error(str(exc), 400)
    except duckdb.Error as exc:
        return _error(f"the query failed: {_engine_message(exc)}", 400)
    except Exception:  # a user query must never surface as a 500
        log.exception("stage=api live SQL failed unexpectedly")
        return _error("the query failed (see the sink's log)", 400)


def _answer(reader: StoreReader, query: str, fmt: str) -> web.Response:
    result = reader.query(query)
    if fmt == "csv":
        body, content_type = result.to_csv().encode(), "text/csv"
    elif fmt == "arrow":
        body, content_type = result.to_arrow_ipc(), "application/vnd.apache.arrow.stream"
    else:
        body, content_type = result.to_json(), "application/json"
    if len(body) > reader.limits.max_bytes:
        raise reader.limits.too_large(len(body))
    return web.Response(body=body, content_type=content_type)


def _engine_message(exc: duckdb.Error) -> str:
    """DuckDB's message without its catalog suggestions ("Did you mean ...") or echo lines."""
    text = str(exc).split("\n", 1)[0]
    return text.split(" Did you mean", 1)[0]


async def compare(request: web.Request) -> web.Response:
    # ``baseline=`` is the deprecated name of ``reference=`` (the no-preference answer is the
    # baseline); it is still read, never together with ``reference=``.
    query = request.query
    if "reference" in query and "baseline" in query:
        return _error("give reference= only (baseline= is its deprecated alias)", 400)
    reference = query.get("reference") or query.get("baseline")
    candidate = query.get("candidate")
    if not reference or not candidate:
        return _error("give ?reference=RUN&candidate=RUN", 400)
    try:
        result = await _in_thread(
            request,
            lambda r: compare_runs(
                r, reference, candidate, allow_mismatch=query.get("allow_mismatch") == "1"
            ),
        )
    except CompareInputError as exc:
        return _error(str(exc), 400)
    return _json(result.as_dict())


async def _read_rows(request: web.Request, call: Callable[[StoreReader], Any]) -> web.Response:
    """A row read's answer: 400 for a bad parameter, 404 for an unknown run, nothing matching
    or a page past the end, 408 past the time limit."""
    try:
        return _json(await _in_thread(request, call))
    except RowQueryError as exc:
        return _error(str(exc), 400)
    except NotFound as exc:
        return _error(str(exc), 404)
    except QueryTimeout as exc:
        return _error(str(exc), 408)


async def run_rows(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    try:
        row_filter = parse_row_filter(request.query)
    except RowQueryError as exc:
        return _error(str(exc), 400)
    return await _read_rows(request, lambda r: r.rows(run_id, row_filter))


async def run_facets(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    if request.query:
        return _error("this endpoint takes no parameters", 400)
    return await _read_rows(request, lambda r: r.facets(run_id))


async def changed(request: web.Request) -> web.Response:
    try:
        reference, candidate, f = parse_changed_filter(request.query)
    except RowQueryError as exc:
        return _error(str(exc), 400)
    return await _read_rows(request, lambda r: r.changed(reference, candidate, f))


async def lineage_list(request: web.Request) -> web.Response:
    if request.query:
        return _error("this endpoint takes no parameters", 400)
    return await _read_rows(request, lambda r: r.lineages())


async def lineage(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if request.query:
        return _error("this endpoint takes no parameters", 400)
    return await _read_rows(request, lambda r: r.lineage(name))


def _snapshot(reader: StoreReader) -> dict[str, Any]:
    return {
        "runs": reader.statuses(),
        "metrics": reader.metrics(None),
        "agreement": reader.agreement(None),
    }


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


# The dashboard's pages run their own script and style only, fetch only from this server,
# and cannot be framed; model output reaches them as text only (textContent).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def dashboard(_: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "dashboard.html")


def create_app(
    store: ResultStore,
    *,
    token: str | None,
    limits: QueryLimits = DEFAULT_LIMITS,
    public_hosts: frozenset[str] = frozenset(),
    data_dir: Path | None = None,
    event_interval_s: float = 1.0,
    metrics: Metrics | None = None,
) -> web.Application:
    """The API over ``store``, whose database is hardened first
    (:func:`services.sink.live.engine.harden`: no file access, configuration locked). The sink
    passes its settings: ``limits`` (``PERG_SQL_*``; default 10 s, 10,000 rows, 16 MiB),
    ``public_hosts`` (``PERG_SINK_PUBLIC_HOSTS``; default none) and ``data_dir``, where the
    questions shown beside stored rows are read (``PERG_DATA_DIR``; default
    :func:`perg.config.default_data_dir`). Shortens the process's thread switch interval
    (:func:`services.sink.live.query.favour_live_queries`). Raises ValueError for a token
    shorter than 16 characters. Live SQL latency is counted in ``metrics`` (the sink worker's)."""
    check_token(token)
    with closing(store.cursor()) as con:
        harden(con)
    favour_live_queries()
    app = web.Application(
        middlewares=[_security_headers, _check_request, _auth], client_max_size=MAX_REQUEST_BYTES
    )
    app[READER] = StoreReader(store, limits, QuestionBook(data_dir))
    app[TOKEN] = token or None
    app[PUBLIC_HOSTS] = public_hosts
    app[SQL_SLOTS] = asyncio.Semaphore(MAX_CONCURRENT_SQL)
    app[EVENT_INTERVAL_S] = event_interval_s
    app[METRICS] = metrics or Metrics("sink")
    app.router.add_get("/health", health)
    app.router.add_get("/api/runs", runs)
    app.router.add_get("/api/runs/{run_id}/status", run_status)
    app.router.add_get("/api/runs/{run_id}/metrics", run_metrics)
    app.router.add_get("/api/runs/{run_id}/agreement", run_agreement)
    app.router.add_get("/api/snapshot", snapshot)
    app.router.add_get("/api/runs/{run_id}/rows", run_rows)
    app.router.add_get("/api/runs/{run_id}/facets", run_facets)
    app.router.add_get("/api/compare", compare)
    app.router.add_get("/api/changed", changed)
    app.router.add_get("/api/lineages", lineage_list)
    app.router.add_get("/api/lineages/{name}", lineage)
    app.router.add_post("/sql", sql)
    app.router.add_get("/events", events)
    app.router.add_get("/", dashboard)
    app.router.add_static("/static/", STATIC_DIR)
    return app
