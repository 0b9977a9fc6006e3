"""Topic names and the record type each one carries."""

from __future__ import annotations

from dataclasses import dataclass

from ._codec import Record
from .records import (
    Acceptance,
    AlignRequest,
    DeadLetter,
    GateDecision,
    Generation,
    RunCancel,
    RunSpec,
    Verdict,
    WorkItem,
)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic: ``<prefix>.<suffix>``, carrying ``record``; ``compacted`` keeps the last per key."""

    suffix: str
    record: type[Record]
    compacted: bool = False

    def name(self, prefix: str) -> str:
        return f"{prefix}.{self.suffix}"


RUNS = TopicSpec("runs", RunSpec, compacted=True)
WORK = TopicSpec("work", WorkItem)
ALIGN = TopicSpec("align", AlignRequest)
GENERATIONS = TopicSpec("generations", Generation)
VERDICTS = TopicSpec("verdicts", Verdict)
DEAD_LETTERS = TopicSpec("dead-letters", DeadLetter)
CANCELS = TopicSpec("cancels", RunCancel, compacted=True)  # keyed by run: the last per run
# One key per record: compaction keeps every one (an append-only history).
ACCEPTANCES = TopicSpec("acceptances", Acceptance, compacted=True)
GATE_DECISIONS = TopicSpec("gate-decisions", GateDecision, compacted=True)

ALL_TOPICS = (
    RUNS, WORK, ALIGN, GENERATIONS, VERDICTS, DEAD_LETTERS,
    CANCELS, ACCEPTANCES, GATE_DECISIONS,
)  # fmt: skip
