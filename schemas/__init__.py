"""Contracts between the PERG Stream services (see records.py for the flow).

The ground floor: this package imports nothing from ``perg`` (tests/test_schemas.py checks it
in a fresh interpreter); the core takes the run's vocabulary, the dataset row and the endpoint
reference from here (values.py). Only what a run names travels: an endpoint is its URL, model,
backend and token *variable*; how a worker's client calls it is the worker's configuration.

Changing a record, during a rolling deploy where old and new workers read the same topics:

- compatible, same ``VERSION``: a new field *with a default* (optional). Old readers ignore
  keys they do not know; new readers fill the default into old messages. Also compatible:
  dropping a field that has a default (old readers fill it in).
- a new ``VERSION`` (and a reader of both versions before any writer of the new one): a new
  required field, a field removed or renamed without a default, a changed type or meaning of a
  field, a narrowed set of allowed values (a ``Literal`` that loses a value). A reader refuses
  any version it does not know, and still refuses a wrong type or a missing required field.

Every release records its messages (tests/fixtures/messages/<release>/); the fixtures test
replays all of them through today's decoders and workers.
"""

from ._codec import Record, SchemaError
from .records import (
    BASELINE_METHOD,
    BASELINE_REPEAT_METHOD,
    BASELINE_SETTING,
    Acceptance,
    AlignRequest,
    CallRecord,
    DeadLetter,
    Decoding,
    FanOut,
    GateDecision,
    Generation,
    IdempotencyKey,
    RunCancel,
    RunContext,
    RunSpec,
    Stage,
    StageTokens,
    Verdict,
    WorkItem,
    check_label,
    fan_out,
    partition_key,
)
from .topics import ALL_TOPICS, TopicSpec
from .values import Endpoint, Item

__all__ = [
    "ALL_TOPICS",
    "BASELINE_METHOD",
    "BASELINE_REPEAT_METHOD",
    "BASELINE_SETTING",
    "Acceptance",
    "AlignRequest",
    "CallRecord",
    "DeadLetter",
    "Decoding",
    "Endpoint",
    "FanOut",
    "GateDecision",
    "Generation",
    "IdempotencyKey",
    "Item",
    "Record",
    "RunCancel",
    "RunContext",
    "RunSpec",
    "SchemaError",
    "Stage",
    "StageTokens",
    "TopicSpec",
    "Verdict",
    "WorkItem",
    "check_label",
    "fan_out",
    "partition_key",
]
