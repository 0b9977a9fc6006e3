"""Pluggable HTTP transports: the aiohttp one used in production and a mock for tests."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from perg.client._types import Timeouts, TransportError


@dataclass(frozen=True, slots=True)
class TransportRequest:
    """One POST a transport sends: where, the JSON body, headers and the attempt's deadlines."""

    url: str
    body: bytes
    headers: Mapping[str, str]
    timeouts: Timeouts

    @property
    def timeout_s(self) -> float:
        """The attempt's whole-reply deadline, in seconds."""
        return self.timeouts.total_s

    def json(self) -> Any:
        """The body, decoded (for test handlers)."""
        return orjson.loads(self.body)


@dataclass(frozen=True, slots=True)
class TransportResponse:
    """What the server answered: HTTP status, raw body and its ``Retry-After``."""

    status: int
    body: bytes
    retry_after_s: float | None = None  # the server's Retry-After, in seconds


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form; HTTP dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds < 86_400 else None


class Transport(Protocol):
    """POSTs a JSON body; raises TransportError on connection failure or timeout."""

    async def post_json(
        self, url: str, body: bytes, headers: Mapping[str, str], timeouts: Timeouts
    ) -> TransportResponse: ...

    async def aclose(self) -> None: ...


class AiohttpTransport:
    """One pooled aiohttp session (created on first use) with at most ``limit`` connections."""

    def __init__(self, limit: int = 64) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    async def post_json(
        self, url: str, body: bytes, headers: Mapping[str, str], timeouts: Timeouts
    ) -> TransportResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit)
            )
        try:
            # no sock_read: it could never fire before total, and re-arms a timer per read
            timeout = aiohttp.ClientTimeout(total=timeouts.total_s, sock_connect=timeouts.connect_s)
            # never to another host than the one checked (perg.hosts): a 3xx is the reply
            async with self._session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                return TransportResponse(
                    response.status,
                    await response.read(),
                    parse_retry_after(response.headers.get("Retry-After")),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            raise TransportError(f"{type(exc).__name__}: {exc}", timed_out=timed_out) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


Handler = Callable[[TransportRequest], TransportResponse | Awaitable[TransportResponse]]


class MockTransport:
    """Answers every request with ``handler(request)`` (sync or async), like httpx.MockTransport.

    The handler may raise TransportError to simulate a connection failure; a handler running past
    the request's total deadline is reported as a TransportError too.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    async def post_json(
        self, url: str, body: bytes, headers: Mapping[str, str], timeouts: Timeouts
    ) -> TransportResponse:
        result = self._handler(TransportRequest(url, body, dict(headers), timeouts))
        if not inspect.isawaitable(result):
            return result
        try:
            async with asyncio.timeout(timeouts.total_s):
                return await result
        except TimeoutError as exc:
            message = f"timed out after {timeouts.total_s:.3g}s"
            raise TransportError(message, timed_out=True) from exc

    async def aclose(self) -> None:
        return None
