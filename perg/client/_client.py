"""ModelClient: bounded, retried OpenAI-compatible chat calls. ClientPool: a client per endpoint."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from perg.client._transport import AiohttpTransport, Transport, TransportResponse
from perg.client._types import Backend, Completion, Endpoint, ModelError, TransportError
from perg.config import setting

logger = logging.getLogger("perg.client")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_RETRY_WAIT: wait_base = wait_random_exponential(multiplier=0.5, max=20)
_EXCERPT = 300


class _RetryableError(Exception):
    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


def response_format(backend: Backend, schema: Mapping[str, object]) -> dict[str, Any]:
    """The ``response_format`` that makes ``backend`` constrain its output to ``schema``."""
    if backend == "tgi":
        return {"type": "json", "value": schema}
    if backend == "llamacpp":  # llama-cpp-python's server; llama.cpp's llama-server accepts it too
        return {"type": "json_object", "schema": schema}
    return {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


class TokenNotAllowed(ModelError):
    """A run names an environment variable as its API token that this worker may not send to
    that endpoint (see :func:`check_token_env`). Permanent: retrying cannot help."""


def check_token_env(name: str, base_url: str) -> None:
    """Raise :class:`TokenNotAllowed` unless ``PERG_MODEL_TOKEN_ENVS`` lets the token in the
    environment variable ``name`` be sent to ``base_url``.

    ``PERG_MODEL_TOKEN_ENVS`` is a comma-separated list of ``NAME`` (any host) or ``NAME@HOST``
    (only to that host; ``HOST`` may carry a port, and a name may be listed once per host).
    Empty or unset: no run may use a token variable.
    """
    host, port = _host_of(base_url)
    entries = [e.strip() for e in setting("model_token_envs", "").split(",") if e.strip()]
    for entry in entries:
        allowed_name, _, allowed_host = entry.partition("@")
        if allowed_name != name:
            continue
        if not allowed_host:
            return
        want_host, want_port = _host_of(f"//{allowed_host}")
        if want_host == host and want_port in (None, port):
            return
    raise TokenNotAllowed(
        f"endpoint {base_url}: this worker may not send the token in environment variable "
        f"{name!r} there; PERG_MODEL_TOKEN_ENVS allows "
        f"{', '.join(entries) if entries else 'no token variables'} (NAME or NAME@HOST)"
    )


def _host_of(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None and parts.scheme in ("http", "https"):
        port = 443 if parts.scheme == "https" else 80
    return (parts.hostname or "").lower(), port


def _excerpt(body: bytes) -> str:
    text = body[:_EXCERPT].decode("utf-8", errors="replace")
    return text + ("..." if len(body) > _EXCERPT else "")


class ModelClient:
    """Chat calls to one endpoint, at most ``max_in_flight`` at a time, retried on overload.

    Retried: 429, 502, 503, 504, connection errors and timeouts, with ``retry_wait`` between
    attempts (default: random exponential backoff, 0.5 s base, 20 s cap). Any other non-2xx
    status raises ModelError at once. A slot is held only while a request is on the wire.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        transport: Transport | None = None,
        *,
        retry_wait: wait_base = DEFAULT_RETRY_WAIT,
    ) -> None:
        self.endpoint = endpoint
        self._url = endpoint.base_url.rstrip("/") + "/chat/completions"
        self._completions_url = endpoint.base_url.rstrip("/") + "/completions"
        if transport is None:
            transport = AiohttpTransport(limit=endpoint.max_in_flight)
        self._transport = transport
        self._slots = asyncio.Semaphore(endpoint.max_in_flight)
        self._headers = {"Content-Type": "application/json"}
        if endpoint.api_key_env is not None:
            check_token_env(endpoint.api_key_env, endpoint.base_url)
            token = os.environ.get(endpoint.api_key_env)
            if not token:
                raise ModelError(
                    f"endpoint {self._url}: environment variable {endpoint.api_key_env!r} "
                    "(api_key_env) is not set"
                )
            self._headers["Authorization"] = f"Bearer {token}"
        self._retrying = AsyncRetrying(
            stop=stop_after_attempt(endpoint.max_retries + 1),
            wait=retry_wait,
            retry=retry_if_exception_type(_RetryableError),
            before_sleep=self._log_retry,
            reraise=True,
        )

    async def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int | None,
        temperature: float = 0.0,
        seed: int | None = None,
        json_schema: Mapping[str, object] | None = None,
        top_p: float | None = None,
    ) -> Completion:
        """A chat completion; ``max_tokens`` None sends no limit, ``top_p`` None the server's."""
        request: dict[str, Any] = {
            "model": self.endpoint.model,
            "messages": [dict(m) for m in messages],
            "temperature": temperature,
            "stream": False,
        }
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        if top_p is not None:
            request["top_p"] = top_p
        if seed is not None:
            request["seed"] = seed
        if json_schema is not None:
            request["response_format"] = response_format(self.endpoint.backend, json_schema)
        return await self._post(self._url, request)

    async def complete(
        self, prompt: str, *, max_tokens: int, temperature: float = 0.0, seed: int | None = None
    ) -> Completion:
        """A raw text completion (``{base_url}/completions``), e.g. a LoRA extractor's token."""
        request: dict[str, Any] = {
            "model": self.endpoint.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": False,
        }
        if seed is not None:
            request["seed"] = seed
        return await self._post(self._completions_url, request)

    async def _post(self, url: str, request: Mapping[str, Any]) -> Completion:
        body = orjson.dumps(request)
        started = time.perf_counter()
        retrying = self._retrying.copy()
        try:
            response: TransportResponse = await retrying(self._attempt, url, body)
        except _RetryableError as exc:
            raise ModelError(
                f"{exc} (gave up after {retrying.statistics['attempt_number']} attempts)",
                status=exc.status,
            ) from exc
        return self._parse(
            url,
            response.body,
            latency_s=time.perf_counter() - started,
            attempts=retrying.statistics["attempt_number"],
        )

    async def _attempt(self, url: str, body: bytes) -> TransportResponse:
        async with self._slots:
            try:
                response = await self._transport.post_json(
                    url, body, self._headers, self.endpoint.timeout_s
                )
            except TransportError as exc:
                raise _RetryableError(f"endpoint {url}: {exc}", None) from exc
        if 200 <= response.status < 300:
            return response
        message = f"endpoint {url}: HTTP {response.status}: {_excerpt(response.body)}"
        if response.status in RETRY_STATUSES:
            raise _RetryableError(message, response.status)
        raise ModelError(message, status=response.status)

    def _parse(self, url: str, body: bytes, *, latency_s: float, attempts: int) -> Completion:
        try:
            data = orjson.loads(body)
            choice = data["choices"][0]
            text = (choice["message"]["content"] if "message" in choice else choice["text"]) or ""
            usage = data.get("usage") or {}
            if not isinstance(text, str):
                raise TypeError("message content is not a string")
            return Completion(
                text=text,
                finish_reason=choice.get("finish_reason"),
                tokens_in=usage.get("prompt_tokens"),
                tokens_out=usage.get("completion_tokens"),
                latency_s=latency_s,
                attempts=attempts,
            )
        except (orjson.JSONDecodeError, LookupError, TypeError, AttributeError) as exc:
            raise ModelError(
                f"endpoint {url}: malformed reply ({exc}): {_excerpt(body)}", status=200
            ) from exc

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        status = getattr(exc, "status", None)
        logger.warning(
            "model call to %s failed (status %s: %s); retry %d/%d in %.2fs",
            self._url,
            status if status is not None else "none",
            exc,
            state.attempt_number,
            self.endpoint.max_retries,
            state.upcoming_sleep,
        )

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ClientPool:
    """One ModelClient per Endpoint, shared by a worker process; created on first ``get``."""

    def __init__(self, *, retry_wait: wait_base = DEFAULT_RETRY_WAIT) -> None:
        self._retry_wait = retry_wait
        self._clients: dict[Endpoint, ModelClient] = {}

    def get(self, endpoint: Endpoint) -> ModelClient:
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = ModelClient(endpoint, retry_wait=self._retry_wait)
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(client.aclose() for client in clients))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
