"""Contracts between the PERG Stream services (see records.py for the flow)."""

from ._codec import Record, SchemaError
from .records import (
    BASELINE_METHOD,
    BASELINE_REPEAT_METHOD,
    BASELINE_SETTING,
    AlignRequest,
    CallRecord,
    DeadLetter,
    Decoding,
    Generation,
    IdempotencyKey,
    Result,
    RunContext,
    RunSpec,
    Stage,
    StageTokens,
    Verdict,
    WorkItem,
    partition_key,
)
from .topics import ALL_TOPICS, TopicSpec

__all__ = [
    "ALL_TOPICS",
    "BASELINE_METHOD",
    "BASELINE_REPEAT_METHOD",
    "BASELINE_SETTING",
    "AlignRequest",
    "CallRecord",
    "DeadLetter",
    "Decoding",
    "Generation",
    "IdempotencyKey",
    "Record",
    "Result",
    "RunContext",
    "RunSpec",
    "SchemaError",
    "Stage",
    "StageTokens",
    "TopicSpec",
    "Verdict",
    "WorkItem",
    "partition_key",
]
