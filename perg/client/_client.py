"""ModelClient: bounded, retried OpenAI-compatible chat calls. ClientPool: a client per endpoint."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
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
from perg.client._types import (
    DEFAULT_TUNING,
    Backend,
    ClientTuning,
    Completion,
    Endpoint,
    ModelError,
    Timeouts,
    TransportError,
)
from perg.observe import EndpointMetrics, Metrics

logger = logging.getLogger("perg.client")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_RETRY_WAIT: wait_base = wait_random_exponential(multiplier=0.5, max=20)
_EXCERPT = 300
MAX_RETRY_AFTER_S = 120.0  # a server asking for a longer pause is waited for this long at most
LATENCY_HEADROOM = 4.0  # an attempt may take this many times the slowest recent reply
LATENCY_DECAY = 0.99  # per reply, how fast the remembered slowest reply fades
LEARN_AFTER = 8  # replies of one request size before deadlines follow observed latency
WATCH_EVERY_S = 0.5  # how often a call on the wire re-reads its deadline
MIN_DEADLINE_S = 5.0  # a learned deadline is never shorter (scheduling jitter, GC pauses)
UNCAPPED_SIZE_TOKENS = 4096  # sizes the deadline of a call sent without max_tokens
# Runs right before an attempt is sent, once its slot is free; what it raises withdraws the call.
BeforeSend = Callable[[], None]


class _RetryableError(Exception):
    def __init__(self, message: str, status: int | None, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class _HonourRetryAfter(wait_base):
    """The backoff, but never shorter than the server's ``Retry-After`` (capped)."""

    def __init__(self, backoff: wait_base) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = float(self.backoff(retry_state))
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        asked = getattr(exc, "retry_after_s", None)
        if isinstance(asked, float):
            wait = max(wait, min(asked, MAX_RETRY_AFTER_S))
        return wait


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


def check_token_env(name: str, base_url: str, allowed: Sequence[str]) -> None:
    """Raise :class:`TokenNotAllowed` unless ``allowed`` (the worker's ``PERG_MODEL_TOKEN_ENVS``)
    lets the token in the environment variable ``name`` be sent to ``base_url``.

    Each entry is ``NAME`` (any host) or ``NAME@HOST`` (only to that host; ``HOST`` may carry a
    port, and a name may be listed once per host). Empty: no run may use a token variable.
    """
    host, port = _host_of(base_url)
    entries = [entry.strip() for entry in allowed if entry.strip()]
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
    """Chat calls to one endpoint, tuned by ``tuning`` (the worker's configuration): at most
    ``max_in_flight`` at a time, retried on overload.

    Retried: 429, 502, 503, 504, connection errors and timeouts, with ``retry_wait`` between
    attempts (default: random exponential backoff, 0.5 s base, 20 s cap), and never sooner
    than a ``Retry-After`` the server sent (capped at 120 s). Any other non-2xx status raises
    ModelError at once (a redirect too: it is never followed). A slot is held only while a
    request is on the wire. Calls, attempts' failures and retries, latency and tokens are
    counted in ``metrics`` (perg.observe; default: a registry nobody serves). An endpoint's
    ``api_key_env`` is sent only when ``token_envs`` allows it (:func:`check_token_env`).

    Every attempt has a deadline (:meth:`timeouts`): ``connect_timeout_s`` to connect, and for
    the reply one sized to the request (its ``max_tokens``), then following the slowest recent
    replies of that size, doubled on every retry, at most ``timeout_s``. A hung call therefore
    costs seconds, not minutes, while a slow server is still waited for.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        transport: Transport | None = None,
        *,
        tuning: ClientTuning = DEFAULT_TUNING,
        retry_wait: wait_base = DEFAULT_RETRY_WAIT,
        metrics: EndpointMetrics | None = None,
        token_envs: Sequence[str] = (),
    ) -> None:
        self.endpoint = endpoint
        self.tuning = tuning
        self._metrics = metrics or Metrics("client").endpoint(endpoint.base_url)
        self._url = endpoint.base_url.rstrip("/") + "/chat/completions"
        self._completions_url = endpoint.base_url.rstrip("/") + "/completions"
        if transport is None:
            transport = AiohttpTransport(limit=tuning.max_in_flight)
        self._transport = transport
        self._slots = asyncio.Semaphore(tuning.max_in_flight)
        self._headers = {"Content-Type": "application/json"}
        if endpoint.api_key_env is not None:
            check_token_env(endpoint.api_key_env, endpoint.base_url, token_envs)
            # The secret itself is read here, from the variable the run names (not a PERG_
            # setting, so not in perg.config's Settings): the token is never copied around.
            token = os.environ.get(endpoint.api_key_env)
            if not token:
                raise ModelError(
                    f"endpoint {self._url}: environment variable {endpoint.api_key_env!r} "
                    "(api_key_env) is not set"
                )
            self._headers["Authorization"] = f"Bearer {token}"
        # max_tokens -> (replies seen, slowest recent reply in s): deadlines follow the server
        self._replies: dict[int, tuple[int, float]] = {}
        # calls on the wire: their deadline scope -> (max_tokens, attempt, loop time when sent)
        self._on_wire: dict[asyncio.Timeout, tuple[int, int, float]] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._retrying = AsyncRetrying(
            stop=stop_after_attempt(tuning.max_retries + 1),
            wait=_HonourRetryAfter(retry_wait),
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
        chat_template_kwargs: Mapping[str, object] | None = None,
        before_send: BeforeSend | None = None,
    ) -> Completion:
        """A chat completion; ``max_tokens`` None sends no limit, ``top_p`` None the server's;
        ``chat_template_kwargs`` go to the server's chat template as vLLM and SGLang take them
        (e.g. Qwen3's ``{"enable_thinking": False}``). ``before_send`` runs once a slot is free,
        before each attempt goes on the wire: what it raises withdraws the call (e.g. its run
        was cancelled while it queued for a slot)."""
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
        if chat_template_kwargs is not None:
            request["chat_template_kwargs"] = dict(chat_template_kwargs)
        size_tokens = max_tokens or UNCAPPED_SIZE_TOKENS
        return await self._post(self._url, request, size_tokens, before_send)

    async def complete(
        self,
        prompt: str,
        *,
        max_tokens: int | None,
        temperature: float = 0.0,
        seed: int | None = None,
        top_p: float | None = None,
        before_send: BeforeSend | None = None,
    ) -> Completion:
        """A raw text completion (``{base_url}/completions``): a LoRA extractor's token, or a
        raw-prompt model's answer (``--layout inst``); ``max_tokens`` None sends no limit."""
        request: dict[str, Any] = {
            "model": self.endpoint.model,
            "prompt": prompt,
            "temperature": temperature,
            "stream": False,
        }
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        if top_p is not None:
            request["top_p"] = top_p
        if seed is not None:
            request["seed"] = seed
        size_tokens = max_tokens or UNCAPPED_SIZE_TOKENS
        return await self._post(self._completions_url, request, size_tokens, before_send)

    async def _post(
        self,
        url: str,
        request: Mapping[str, Any],
        size_tokens: int,
        before_send: BeforeSend | None = None,
    ) -> Completion:
        """POST ``request`` with retries; ``size_tokens`` sizes its deadline (see timeouts).

        The first attempt runs directly: tenacity's bookkeeping costs about as much CPU as a
        fast server's whole reply, and most calls succeed at once. A failed first attempt
        hands over to :meth:`_retry`."""
        body = orjson.dumps(request)
        started = time.perf_counter()
        metrics = self._metrics
        try:
            try:
                response = await self._attempt(url, body, size_tokens, 1, before_send)
                attempts = 1
            except _RetryableError as failure:
                response, attempts = await self._retry(url, body, size_tokens, failure, before_send)
            latency_s = time.perf_counter() - started
            completion = self._parse(url, response.body, latency_s=latency_s, attempts=attempts)
        except ModelError:
            metrics.calls_failed.inc()
            raise
        metrics.calls_ok.inc()
        metrics.latency.observe(latency_s)
        if completion.tokens_in is not None:
            metrics.tokens_in.observe(completion.tokens_in)
        if completion.tokens_out is not None:
            metrics.tokens_out.observe(completion.tokens_out)
        return completion

    async def _retry(
        self,
        url: str,
        body: bytes,
        size_tokens: int,
        failure: _RetryableError,
        before_send: BeforeSend | None = None,
    ) -> tuple[TransportResponse, int]:
        """Attempts after a failed first one, under tenacity's policy: the endpoint's retry
        budget, a wait that honours Retry-After, a log line per retry. The first failure is
        replayed as tenacity's attempt 1, so it counts and its Retry-After applies."""
        retrying = self._retrying.copy()

        async def attempt() -> TransportResponse:
            number: int = retrying.statistics["attempt_number"]
            if number == 1:
                raise failure
            return await self._attempt(url, body, size_tokens, number, before_send)

        try:
            response: TransportResponse = await retrying(attempt)
        except _RetryableError as exc:
            raise ModelError(
                f"{exc} (gave up after {retrying.statistics['attempt_number']} attempts)",
                status=exc.status,
            ) from exc
        return response, retrying.statistics["attempt_number"]

    def timeouts(self, max_tokens: int, attempt: int = 1) -> Timeouts:
        """The deadlines of attempt number ``attempt`` (1-based) of a call for ``max_tokens``.

        Until ``LEARN_AFTER`` replies to requests of this size were seen, the reply deadline
        is sized from the endpoint: ``deadline_base_s + max_tokens / min_tokens_per_s``; then
        it is ``LATENCY_HEADROOM`` times the slowest recent reply (never under
        ``MIN_DEADLINE_S``), so it follows the server actually serving. Each retry doubles it;
        ``timeout_s`` caps it."""
        tuning = self.tuning
        seen, slowest = self._replies.get(max_tokens, (0, 0.0))
        if seen >= LEARN_AFTER:
            total = max(MIN_DEADLINE_S, LATENCY_HEADROOM * slowest)
        else:
            total = tuning.deadline_base_s + max_tokens / tuning.min_tokens_per_s
        total = min(total * 2 ** (attempt - 1), tuning.timeout_s)
        return Timeouts(connect_s=min(tuning.connect_timeout_s, total), total_s=total)

    def _learn(self, max_tokens: int, reply_s: float) -> None:
        seen, slowest = self._replies.get(max_tokens, (0, 0.0))
        self._replies[max_tokens] = (seen + 1, max(reply_s, slowest * LATENCY_DECAY))

    async def _attempt(
        self,
        url: str,
        body: bytes,
        max_tokens: int,
        attempt: int,
        before_send: BeforeSend | None = None,
    ) -> TransportResponse:
        async with self._slots:
            if before_send is not None:
                before_send()
            sent = time.perf_counter()
            try:
                response = await self._post_watched(url, body, max_tokens, attempt)
            except TransportError as exc:
                metrics = self._metrics
                (metrics.timeouts if exc.timed_out else metrics.connection_errors).inc()
                raise _RetryableError(f"endpoint {url}: {exc}", None, None) from exc
            reply_s = time.perf_counter() - sent
        if 200 <= response.status < 300:
            self._learn(max_tokens, reply_s)
            return response
        self._metrics.http_error(response.status)
        message = f"endpoint {url}: HTTP {response.status}: {_excerpt(response.body)}"
        if response.status in RETRY_STATUSES:
            raise _RetryableError(message, response.status, response.retry_after_s)
        raise ModelError(message, status=response.status)

    async def _post_watched(
        self, url: str, body: bytes, max_tokens: int, attempt: int
    ) -> TransportResponse:
        """POST with the attempt's deadline, kept up to date while waiting: when replies seen
        in the meantime shorten it (the first calls to a server start with the sized
        deadline), a call already on the wire is held to the shorter one (see
        :meth:`_hold_to_deadlines`)."""
        timeouts = self.timeouts(max_tokens, attempt)
        sent = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout_at(sent + timeouts.total_s) as scope:
                self._on_wire[scope] = (max_tokens, attempt, sent)
                if self._watchdog is None or self._watchdog.done():
                    self._watchdog = asyncio.create_task(self._hold_to_deadlines())
                try:
                    return await self._transport.post_json(url, body, self._headers, timeouts)
                finally:
                    del self._on_wire[scope]
        except TimeoutError:
            deadline = self.timeouts(max_tokens, attempt).total_s
            raise TransportError(f"no reply within {deadline:.3g}s", timed_out=True) from None

    async def _hold_to_deadlines(self) -> None:
        """While calls are on the wire, every ``WATCH_EVERY_S``: bring each call's deadline
        forward to what the replies since it was sent have taught. One task per client, so
        a call costs a dictionary entry, not a timer of its own."""
        while self._on_wire:
            await asyncio.sleep(WATCH_EVERY_S)
            for scope, (max_tokens, attempt, sent) in list(self._on_wire.items()):
                deadline = sent + self.timeouts(max_tokens, attempt).total_s
                when = scope.when()
                if when is not None and deadline < when:
                    scope.reschedule(deadline)

    def _parse(self, url: str, body: bytes, *, latency_s: float, attempts: int) -> Completion:
        try:
            data = orjson.loads(body)
            choice = data["choices"][0]
            message = choice.get("message")
            text = (message["content"] if message is not None else choice["text"]) or ""
            # a server's reasoning parser may return a thinking model's thinking apart
            reasoning = None
            if isinstance(message, dict):
                reasoning = message.get("reasoning_content") or message.get("reasoning")
            usage = data.get("usage") or {}
            if not isinstance(text, str) or not isinstance(reasoning, str | None):
                raise TypeError("message content is not a string")
            return Completion(
                text=text,
                finish_reason=choice.get("finish_reason"),
                tokens_in=usage.get("prompt_tokens"),
                tokens_out=usage.get("completion_tokens"),
                latency_s=latency_s,
                attempts=attempts,
                reasoning=reasoning,
            )
        except (orjson.JSONDecodeError, LookupError, TypeError, AttributeError) as exc:
            raise ModelError(
                f"endpoint {url}: malformed reply ({exc}): {_excerpt(body)}", status=200
            ) from exc

    def _log_retry(self, state: RetryCallState) -> None:
        self._metrics.retries.inc()
        exc = state.outcome.exception() if state.outcome else None
        status = getattr(exc, "status", None)
        logger.warning(
            "model call to %s failed (status %s: %s); retry %d/%d in %.2fs",
            self._url,
            status if status is not None else "none",
            exc,
            state.attempt_number,
            self.tuning.max_retries,
            state.upcoming_sleep,
        )

    async def aclose(self) -> None:
        """Close the client's transport (its pooled connections)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
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
    """One ModelClient per Endpoint, shared by a worker process; created on first ``get``.

    ``transport`` makes each client's transport (default: aiohttp); tests pass a
    ``MockTransport`` factory to run services in-process. The clients count their calls in
    ``metrics`` (a worker's; default: a registry nobody serves); ``tuning`` is the worker's
    for every client; it may send the token variables ``token_envs`` allows
    (:func:`check_token_env`; default: none)."""

    def __init__(
        self,
        *,
        tuning: ClientTuning = DEFAULT_TUNING,
        retry_wait: wait_base = DEFAULT_RETRY_WAIT,
        transport: Callable[[Endpoint], Transport] | None = None,
        metrics: Metrics | None = None,
        token_envs: Sequence[str] = (),
    ) -> None:
        self._tuning = tuning
        self._retry_wait = retry_wait
        self._token_envs = tuple(token_envs)
        self._transport = transport
        self._metrics = metrics or Metrics("client")
        self._clients: dict[Endpoint, ModelClient] = {}

    def get(self, endpoint: Endpoint) -> ModelClient:
        """The pool's client for ``endpoint``, made on first use."""
        client = self._clients.get(endpoint)
        if client is None:
            transport = self._transport(endpoint) if self._transport else None
            client = ModelClient(
                endpoint,
                transport,
                tuning=self._tuning,
                retry_wait=self._retry_wait,
                metrics=self._metrics.endpoint(endpoint.base_url),
                token_envs=self._token_envs,
            )
            self._clients[endpoint] = client
        return client

    async def aclose(self) -> None:
        """Close every client of the pool (their connections); the pool can be reused."""
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
