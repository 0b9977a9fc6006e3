"""Value types and errors of the model client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Backend = Literal["tgi", "openai", "llamacpp", "vllm"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One OpenAI-compatible model server; the client POSTs ``{base_url}/chat/completions``.

    ``api_key_env`` is the *name* of an environment variable holding the bearer token, so an
    Endpoint can travel on Kafka without carrying a secret. ``backend`` decides the structured
    output form of ``response_format``. ``constrain_rating``: when this endpoint is the judge,
    its Likert rating call asks for structured output that can only be ``"<answer>N</answer>"``
    (N in 1..5), still read by the paper's rule; for small judges that otherwise never emit the
    tag (the demo's). Off by default: the paper's judge reasons before it rates.
    """

    base_url: str
    model: str
    backend: Backend = "openai"
    api_key_env: str | None = None
    max_in_flight: int = 64
    timeout_s: float = 300.0
    max_retries: int = 5
    constrain_rating: bool = False


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
