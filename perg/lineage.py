"""Lineages: the runs of one deployed model, its accepted reference, its history.

    reference = accepted_reference(client, "chat-prod")      # the latest accepted run
    accept_run(settings, run_id, note="deployed 2026-12-03")  # through Kafka, stored by the sink
    rows = lineage_history(client, "chat-prod")               # the view lineage_history

Acceptances and gate decisions travel through Kafka like every other write (the sink is the
one writer of the results file) and are append-only: accepting never rewrites a result.
Bad input raises :class:`~perg.errors.InputError` (unknown lineage or run, a lineage without
an accepted run, accepting an incomplete or cancelled run); an unreachable broker
:class:`~perg.kafka.KafkaUnavailable`, an unreachable sink ``SinkUnavailable`` (exit 3).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from perg.config import Settings
from perg.errors import InputError
from perg.kafka import publish_records
from schemas import Acceptance, GateDecision, SchemaError, check_label
from schemas.topics import ACCEPTANCES, GATE_DECISIONS

__all__ = [
    "MAX_NOTE_CHARS",
    "STORED_WAIT_S",
    "Queryable",
    "accept_run",
    "accepted_reference",
    "check_lineage",
    "check_note",
    "lineage_history",
    "record_gate_decision",
    "run_state",
    "sql_literal",
    "wait_stored",
]

log = logging.getLogger("perg.lineage")

STORED_WAIT_S = 30.0  # how long a command waits for the sink to store what it published
MAX_NOTE_CHARS = 2000  # an acceptance's note, a cancellation's reason


def check_note(text: str, flag: str) -> None:
    """InputError when a note is too long to travel (a message has a size limit)."""
    if len(text) > MAX_NOTE_CHARS:
        raise InputError(f"{flag}: at most {MAX_NOTE_CHARS} characters, got {len(text)}")


class Queryable(Protocol):
    """Live SQL: the sink's API or the results file (perg.cli.client.SinkClient)."""

    def sql(self, query: str) -> dict[str, Any]: ...


def sql_literal(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(zip(result["columns"], row, strict=True)) for row in result["rows"]]


def check_lineage(name: str, where: str = "lineage") -> None:
    """InputError unless ``name`` is a valid lineage name."""
    try:
        check_label(name, where)
    except SchemaError as exc:
        raise InputError(str(exc)) from None


def run_state(client: Queryable, run_id: str) -> dict[str, Any] | None:
    """The run's row of view run_states (lineage, version, state, counts), None if unknown."""
    rows = _rows(client.sql(f"SELECT * FROM run_states WHERE run_id = {sql_literal(run_id)}"))
    return rows[0] if rows else None


def _check_known_lineage(client: Queryable, lineage: str) -> None:
    check_lineage(lineage)
    found = _rows(
        client.sql(f"SELECT count(*) AS n FROM runs WHERE lineage = {sql_literal(lineage)}")
    )
    if not found[0]["n"]:
        raise InputError(
            f"unknown lineage {lineage!r}: no run was submitted with --lineage {lineage}"
        )


def accepted_reference(client: Queryable, lineage: str) -> str:
    """The run id of the lineage's latest acceptance."""
    _check_known_lineage(client, lineage)
    rows = _rows(
        client.sql(
            f"SELECT run_id FROM acceptances WHERE lineage = {sql_literal(lineage)} "
            "ORDER BY accepted_at DESC, run_id LIMIT 1"
        )
    )
    if not rows:
        raise InputError(
            f"lineage {lineage!r} has no accepted run yet: accept one with perg accept RUN"
        )
    run_id: str = rows[0]["run_id"]
    return run_id


def lineage_history(client: Queryable, lineage: str) -> list[dict[str, Any]]:
    """The lineage's runs, oldest first (view lineage_history)."""
    _check_known_lineage(client, lineage)
    return _rows(
        client.sql(
            f"SELECT * FROM lineage_history WHERE lineage = {sql_literal(lineage)} "
            "ORDER BY position"
        )
    )


def wait_stored(client: Queryable, query: str, timeout_s: float = STORED_WAIT_S) -> bool:
    """Poll ``query`` until it returns a row (the sink stored a record); False on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        if client.sql(query)["rows"]:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def accept_run(
    settings: Settings,
    client: Queryable,
    run_id: str,
    note: str = "",
    *,
    allow_partial: bool = False,
    wait_s: float = STORED_WAIT_S,
) -> tuple[Acceptance, bool]:
    """Record ``run_id`` as the accepted state of its lineage; return the acceptance and
    whether the sink stored it within ``wait_s``. Refuses an unknown run, a run without a
    lineage, and (unless ``allow_partial``: a sequential gate's explicit verdict) an
    incomplete or cancelled run."""
    check_note(note, "--note")
    state = run_state(client, run_id)
    if state is None:
        raise InputError(f"unknown run {run_id!r}")
    lineage = state["lineage"]
    if lineage is None:
        raise InputError(
            f"run {run_id!r} has no lineage: only a run submitted with --lineage can be accepted"
        )
    counts = f"{state['results_stored']}/{state['expected_results']} results stored"
    if state["state"] == "cancelled" and not allow_partial:
        raise InputError(f"run {run_id!r} was cancelled ({counts}): it cannot be accepted")
    if state["state"] != "done" and not allow_partial:
        raise InputError(f"run {run_id!r} is incomplete ({counts}): accept it once it is done")
    acceptance = Acceptance(
        run_id=run_id, lineage=lineage, accepted_at=datetime.now(UTC).isoformat(), note=note
    )
    asyncio.run(publish_records(settings, ACCEPTANCES, [(acceptance.message_key, acceptance)]))
    log.info("run=%s accepted in lineage %s", run_id, lineage)
    stored_at = datetime.fromisoformat(acceptance.accepted_at).replace(tzinfo=None)
    stored = wait_stored(
        client,
        f"SELECT 1 FROM acceptances WHERE run_id = {sql_literal(run_id)} "
        f"AND accepted_at = TIMESTAMP {sql_literal(stored_at.isoformat(sep=' '))}",
        wait_s,
    )
    return acceptance, stored


def record_gate_decision(settings: Settings, decision: GateDecision) -> None:
    """Publish a gate's verdict (the sink stores it: gate_decisions, lineage_history)."""
    asyncio.run(publish_records(settings, GATE_DECISIONS, [(decision.message_key, decision)]))
