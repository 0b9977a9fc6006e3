"""Value types and errors of the model client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Backend = Literal["tgi", "openai", "llamacpp", "vllm"]
DEFAULT_MAX_IN_FLIGHT = 64


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One OpenAI-compatible model server; the client POSTs ``{base_url}/chat/completions``.

    ``api_key_env`` is the *name* of an environment variable holding the bearer token, so an
    Endpoint can travel on Kafka without carrying a secret. ``backend`` decides the structured
    output form of ``response_format``.

    Bounds: at most ``max_in_flight`` requests of one worker process are on the wire at once
    (must be >= 1); a failing call is retried ``max_retries`` times. Each attempt has a
    deadline (see ``ModelClient.timeouts``): ``connect_timeout_s`` to open the connection, and
    for the reply first ``deadline_base_s + max_tokens / min_tokens_per_s`` (the base covers
    queueing and prompt processing), then four times the slowest recent reply of that size (at
    least 5 s), doubled on every retry, never more than ``timeout_s``: a slow but healthy
    server is waited for, a hung call is abandoned in seconds.
    ``constrain_rating``: when this endpoint is the judge, its Likert rating call asks for
    structured output that can only be ``"<answer>N</answer>"`` (N in 1..5), still read by the
    paper's rule; for small judges that otherwise never emit the tag (the demo's). Off by
    default: the paper's judge reasons before it rates.
    """

    base_url: str
    model: str
    backend: Backend = "openai"
    api_key_env: str | None = None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    timeout_s: float = 300.0
    max_retries: int = 5
    connect_timeout_s: float = 10.0
    deadline_base_s: float = 30.0
    min_tokens_per_s: float = 50.0
    constrain_rating: bool = False

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {self.max_in_flight}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {self.max_retries}")
        for name in ("timeout_s", "connect_timeout_s", "deadline_base_s", "min_tokens_per_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Deadlines of one attempt: ``connect_s`` to connect, ``total_s`` for the whole reply.

    A non-streaming chat reply arrives in one piece, so the first byte and the total coincide:
    ``total_s`` bounds both."""

    connect_s: float
    total_s: float


@dataclass(frozen=True, slots=True)
class Completion:
    """The answer to one chat call.

    ``latency_s`` is the wall time of the whole call: waiting for a slot, every attempt and the
    backoff between attempts. ``attempts`` is 1 + the number of retries.
    """

    text: str
    finish_reason: str | None
    tokens_in: int | None
    tokens_out: int | None
    latency_s: float
    attempts: int


class ModelError(Exception):
    """A call failed for good: a non-retryable status, retries exhausted or a malformed reply.

    ``status`` is the last HTTP status, or None when no response was received.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransportError(Exception):
    """A transport could not get a response: connection failure or timeout (retried)."""
