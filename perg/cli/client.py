"""How the command line reads results: the live sink over HTTP, else the DuckDB file itself.

Every call asks the sink at ``settings.sink_url`` first. When nothing listens there (connection
refused), that one call is answered from ``settings.db``, opened read-only and hardened like the
sink's query engine (same SQL guard and limits), and the file is closed again right away: a
reader never holds the file while a restarted sink needs its write lock. A warning on stderr
says the answer comes from a possibly stale file.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import closing
from typing import Any
from urllib.parse import quote, urlencode

import duckdb
import orjson

from perg.config import Settings, is_http_url
from perg.errors import InputError, PergError, UnavailableError
from services.sink.live.engine import open_read_only
from services.sink.live.query import QueryLimits, StoreReader
from services.sink.live.rows import ChangedFilter, QuestionBook

DUCKDB_MAGIC = b"DUCK"  # bytes 8-12 of every DuckDB database file


class SinkError(PergError):
    """The sink (or the local store) refused or failed a request; the message says why."""


class SinkRefused(SinkError, InputError):
    """The request itself is at fault (a refused query, an unknown route): exit code 2."""


class SinkUnavailable(SinkError, UnavailableError):
    """Neither the sink nor its file can answer (no sink and no file, a sink error): exit 3."""


class SinkBusy(SinkUnavailable):
    """No sink answers yet and another process (a sink starting up) holds the file: worth
    asking again in a moment."""


class SinkClient:
    def __init__(self, settings: Settings) -> None:
        if not is_http_url(settings.sink_url):
            raise InputError(
                f"PERG_SINK_URL={settings.sink_url!r} is not an http:// or https:// URL "
                "with a host (e.g. http://127.0.0.1:8765)"
            )
        self.settings = settings
        self._warned = False

    # -- the calls --------------------------------------------------------------------------

    def statuses(self) -> list[dict[str, Any]]:
        """The status of every stored run, oldest first."""
        runs: list[dict[str, Any]] = self._call("GET", "/api/runs", lambda r: r.statuses())
        return runs

    def status(self, run_id: str) -> dict[str, Any] | None:
        """The status of one run, None when the store does not know it (yet)."""
        found: dict[str, Any] | None = self._call(
            "GET",
            f"/api/runs/{quote(run_id, safe='')}/status",
            lambda r: next(iter(r.statuses(run_id)), None),
        )
        return found

    def agreement(self, run_id: str) -> list[dict[str, Any]]:
        """How often the rules parser and the run's model extractor disagree (pooled)."""
        rows = self._call("GET", f"/api/runs/{quote(run_id, safe='')}/agreement",
                          lambda r: r.agreement(run_id))  # fmt: skip
        return list(rows or [])

    def metrics(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._call("GET", f"/api/runs/{quote(run_id, safe='')}/metrics?by=source",
                          lambda r: r.metrics(run_id))  # fmt: skip
        return list(rows or [])

    def changed(self, reference: str, candidate: str, f: ChangedFilter) -> dict[str, Any]:
        """One page of the discordant rows of two runs (GET /api/changed)."""
        params = {"reference": reference, "candidate": candidate, "metric": f.metric,
                  "direction": f.direction, "setting": f.setting, "method": f.method,
                  "source": f.source, "page": f.page.number, "page_size": f.page.size}  # fmt: skip
        query = urlencode({k: v for k, v in params.items() if v is not None})
        found: dict[str, Any] | None = self._call(
            "GET", f"/api/changed?{query}", lambda r: r.changed(reference, candidate, f)
        )
        if found is None:
            raise SinkRefused(f"unknown run {reference!r} or {candidate!r}")
        return found

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
        """The decoded JSON answer of the sink (None for 404), or ``local(reader)`` on the file
        opened for this call only."""
        try:
            return self._http(method, path, body)
        except ConnectionError:  # refused, or reset by a sink that just died: read the file
            pass
        with closing(self._open_local()) as con:
            self._warn_stale()
            try:
                limits = QueryLimits.from_settings(self.settings)
                return local(StoreReader(con, limits, QuestionBook(self.settings.data_dir)))
            except (ValueError, duckdb.Error) as exc:
                raise SinkRefused(str(exc)) from exc

    def _warn_stale(self) -> None:
        if not self._warned:
            print(
                f"perg: no sink answers at {self.settings.sink_url}; reading {self.settings.db} "
                "directly (read-only; it may be stale: rows the sink has not stored yet are "
                "missing)",
                file=sys.stderr,
            )
            self._warned = True

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
            with urllib.request.urlopen(request, timeout=self.settings.sink_timeout_s) as response:
                return orjson.loads(response.read())
        except TimeoutError as exc:  # connected, but no answer in time (a hung sink)
            raise SinkUnavailable(
                f"the sink at {self.settings.sink_url} did not answer within "
                f"{self.settings.sink_timeout_s:g} s (PERG_SINK_TIMEOUT_S)"
            ) from exc
        except orjson.JSONDecodeError as exc:
            raise SinkUnavailable(
                f"the sink at {self.settings.sink_url} answered with something that is not JSON "
                "(is PERG_SINK_URL the sink's API?)"
            ) from exc
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code >= 500:
                raise SinkUnavailable(_error_message(exc)) from exc
            raise SinkRefused(_error_message(exc)) from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionError):
                raise exc.reason from exc
            if isinstance(exc.reason, TimeoutError):
                raise SinkUnavailable(
                    f"the sink at {self.settings.sink_url} did not answer within "
                    f"{self.settings.sink_timeout_s:g} s (PERG_SINK_TIMEOUT_S)"
                ) from exc
            raise SinkUnavailable(
                f"cannot reach the sink at {self.settings.sink_url}: {exc.reason}"
            ) from exc

    def _open_local(self) -> duckdb.DuckDBPyConnection:
        db = self.settings.db
        if not db.is_file():
            raise SinkUnavailable(
                f"no sink answers at {self.settings.sink_url} and the results file {db} does "
                "not exist (set PERG_SINK_URL or PERG_DB)"
            )
        with db.open("rb") as fh:
            if fh.read(12)[8:12] != DUCKDB_MAGIC:
                raise InputError(
                    f"PERG_DB={db}: not a DuckDB database (a results store written by the "
                    "sink); to score a results file use perg score FILE"
                )
        try:
            return open_read_only(db)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise SinkBusy(
                    f"no sink answers at {self.settings.sink_url} and another process (a sink "
                    f"starting up?) holds {db}: {exc}"
                ) from exc
            raise SinkUnavailable(f"no sink answers at {self.settings.sink_url} and {db} "
                            f"cannot be opened read-only: {exc}") from exc  # fmt: skip
        except duckdb.Error as exc:
            raise SinkUnavailable(f"no sink answers at {self.settings.sink_url} and {db} "
                            f"cannot be opened read-only: {exc}") from exc  # fmt: skip


def _error_message(exc: urllib.error.HTTPError) -> str:
    raw = exc.read()
    try:
        message = orjson.loads(raw)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = raw.decode(errors="replace") or exc.reason
    return f"the sink answered {exc.code}: {message}"
