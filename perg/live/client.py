"""How the command line reads results: the live sink over HTTP, else the DuckDB file itself.

When no sink answers at ``settings.sink_url`` (connection refused), the client opens
``settings.db`` read-only and answers the same calls locally, with the same SQL guard and limits.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import duckdb
import orjson

from perg.config import Settings
from perg.live.query import QueryLimits, StoreReader
from perg.store import ResultStore


class SinkError(RuntimeError):
    """The sink (or the local store) refused or failed a request; the message says why."""


class SinkClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local: StoreReader | None = None

    # -- the calls --------------------------------------------------------------------------

    def statuses(self, run_id: str | None = None) -> list[dict[str, Any]]:
        if run_id is None:
            runs: list[dict[str, Any]] = self._call("GET", "/api/runs", lambda r: r.statuses())
            return runs
        found = self._call("GET", f"/api/runs/{quote(run_id, safe='')}/status",
                           lambda r: next(iter(r.statuses(run_id)), None))  # fmt: skip
        return [found] if found else []

    def metrics(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._call("GET", f"/api/runs/{quote(run_id, safe='')}/metrics?by=source",
                          lambda r: r.metrics(run_id))  # fmt: skip
        return list(rows or [])

    def sql(self, query: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/sql", lambda r: r.sql(query), {"sql": query})
        return result

    # -- transport --------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        local: Callable[[StoreReader], Any],
        body: dict[str, Any] | None = None,
    ) -> Any:
        """The decoded JSON answer of the sink (None for 404), or ``local(reader)``."""
        if self._local is None:
            try:
                return self._http(method, path, body)
            except ConnectionRefusedError:
                self._local = self._open_local()
        try:
            return local(self._local)
        except (ValueError, RuntimeError, duckdb.Error) as exc:
            raise SinkError(str(exc)) from exc

    def _http(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.settings.sink_token:
            headers["Authorization"] = f"Bearer {self.settings.sink_token}"
        request = urllib.request.Request(
            self.settings.sink_url.rstrip("/") + path,
            data=orjson.dumps(body) if body is not None else None,
            headers=headers,
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise SinkError(_error_message(exc)) from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                raise exc.reason from exc
            raise SinkError(
                f"cannot reach the sink at {self.settings.sink_url}: {exc.reason}"
            ) from exc

    def _open_local(self) -> StoreReader:
        db = self.settings.db
        if not db.is_file():
            raise SinkError(
                f"no sink answers at {self.settings.sink_url} and the results file {db} does "
                "not exist (set PERG_SINK_URL or PERG_DB)"
            )
        try:
            store = ResultStore(db, read_only=True)
        except duckdb.Error as exc:
            raise SinkError(f"no sink answers at {self.settings.sink_url} and {db} "
                            f"cannot be opened read-only: {exc}") from exc  # fmt: skip
        return StoreReader(store, QueryLimits.from_settings())


def _error_message(exc: urllib.error.HTTPError) -> str:
    raw = exc.read()
    try:
        message = orjson.loads(raw)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = raw.decode(errors="replace") or exc.reason
    return f"the sink answered {exc.code}: {message}"
