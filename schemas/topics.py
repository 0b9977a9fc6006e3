"""Topic names and the record type each one carries."""

from __future__ import annotations

from dataclasses import dataclass

from ._codec import Record
from .records import DeadLetter, Generation, Result, RunSpec, Verdict, WorkItem


@dataclass(frozen=True, slots=True)
class TopicSpec:
    suffix: str
    record: type[Record]
    compacted: bool = False

    def name(self, prefix: str) -> str:
        return f"{prefix}.{self.suffix}"


RUNS = TopicSpec("runs", RunSpec, compacted=True)
WORK = TopicSpec("work", WorkItem)
ALIGN = TopicSpec("align", Generation)
GENERATIONS = TopicSpec("generations", Generation)
VERDICTS = TopicSpec("verdicts", Verdict)
RESULTS = TopicSpec("results", Result)
DEAD_LETTERS = TopicSpec("dead-letters", DeadLetter)

ALL_TOPICS = (RUNS, WORK, ALIGN, GENERATIONS, VERDICTS, RESULTS, DEAD_LETTERS)
