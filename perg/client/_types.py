"""Value types and errors of the model client."""

from __future__ import annotations

from dataclasses import dataclass

from perg.errors import InputError
from schemas.values import Backend as Backend
from schemas.values import Endpoint as Endpoint

DEFAULT_MAX_IN_FLIGHT = 64


@dataclass(frozen=True, slots=True)
class ClientTuning:
    """How a worker's client calls every endpoint (the worker's configuration, never on the
    wire: ``PERG_MODEL_*`` settings, see services._runtime.WorkerOptions).

    Bounds: at most ``max_in_flight`` requests of one worker process are on the wire at once
    per endpoint (must be >= 1); a failing call is retried ``max_retries`` times. Each attempt
    has a deadline (see ``ModelClient.timeouts``): ``connect_timeout_s`` to open the
    connection, and for the reply first ``deadline_base_s + max_tokens / min_tokens_per_s``
    (the base covers queueing and prompt processing), then four times the slowest recent reply
    of that size (at least 5 s), doubled on every retry, never more than ``timeout_s``: a slow
    but healthy server is waited for, a hung call is abandoned in seconds.
    """

    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    """Most requests of one worker process on the wire at once, per endpoint (>= 1)."""
    timeout_s: float = 300.0
    """Ceiling of any attempt's reply deadline, in seconds."""
    max_retries: int = 5
    """Retries of a failing call (429, 5xx overload, connection errors, timeouts)."""
    connect_timeout_s: float = 10.0
    """Deadline to open a connection, in seconds."""
    deadline_base_s: float = 30.0
    """The first reply deadline's allowance for queueing and prompt processing, in seconds."""
    min_tokens_per_s: float = 50.0
    """The slowest generation speed the first reply deadline allows for."""

    def __post_init__(self) -> None:
        """Bounds that make no sense are bad input (:class:`~perg.errors.InputError`)."""
        if self.max_in_flight < 1:
            raise InputError(f"max_in_flight must be at least 1, got {self.max_in_flight}")
        if self.max_retries < 0:
            raise InputError(f"max_retries must be 0 or more, got {self.max_retries}")
        for name in ("timeout_s", "connect_timeout_s", "deadline_base_s", "min_tokens_per_s"):
            value = getattr(self, name)
            if not value > 0:
                raise InputError(f"{name} must be positive, got {value}")


DEFAULT_TUNING = ClientTuning()


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Deadlines of one attempt: ``connect_s`` to connect, ``total_s`` for the whole reply.

    A non-streaming chat reply arrives in one piece, so the first byte and the total coincide:
    ``total_s`` bounds both."""

    connect_s: float
    """Seconds to open the connection."""
    total_s: float
    """Seconds for the whole reply."""


@dataclass(frozen=True, slots=True)
class Completion:
    """The answer to one chat call.

    ``latency_s`` is the wall time of the whole call: waiting for a slot, every attempt and the
    backoff between attempts. ``attempts`` is 1 + the number of retries.
    """

    text: str
    """The generated text (the message content, or the completion's text)."""
    finish_reason: str | None
    """Why generation stopped as the server reported it (``"stop"``, ``"length"``...)."""
    tokens_in: int | None
    """Prompt tokens as the server reported them; None when it reported no usage."""
    tokens_out: int | None
    """Generated tokens as the server reported them; None when it reported no usage."""
    latency_s: float
    """Wall time of the whole call, retries and waiting for a slot included, in seconds."""
    attempts: int
    """1 + the number of retries."""
    reasoning: str | None = None
    """A thinking model's thinking, when the server returned it apart from the answer
    (``reasoning_content``), or as read from the text (``</think>``); else None."""


class ModelError(Exception):
    """A call failed for good: a non-retryable status, retries exhausted or a malformed reply.

    ``status`` is the last HTTP status, or None when no response was received.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransportError(Exception):
    """A transport could not get a response: connection failure or timeout (retried).

    ``timed_out`` tells a deadline that passed from a connection that failed."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out
