"""How every model call of a run is decoded: one :class:`~perg.protocol.CallKind` to one
:class:`GenerationConfig`, in one place (:func:`generation_config`).

The model under test (answers, self-critiques, Pref-Aligner rewrites) is decoded with the run's
decoding (``RunContext.decoding``: a profile's temperature, seed, top_p, thinking switch, its
own per-stage limits or the protocol's, then the ``--max-tokens`` cap); the judge and the
extractor always greedily, temperature 0 and seed 42 (+ the attempt), as the paper's
gpt-4o-mini calls (pref_eval_utils.py, mcq_extractor_utils.py), with the protocol's limits
under the cap, never a profile's lifted ones. A re-ask (``attempt`` > 0, strict only) samples
at the profile's retry temperature. The mapping is an exhaustive ``match`` over the enum:
mypy refuses a kind without its configuration, and a mistyped kind does not exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import assert_never

from perg.extraction import choice_schema
from perg.judging import RATING_SCHEMA
from perg.protocol import (
    ALIGNER_SCHEMA,
    CRITIC_SCHEMA,
    JUDGE_SEED,
    STRICT_RETRY_TEMPERATURE,
    CallKind,
    Protocol,
)
from schemas import Decoding, Item, RunContext


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """Everything one model call sends besides its messages."""

    temperature: float
    """Sampling temperature; 0 is greedy."""
    seed: int | None
    """Sampling seed; None sends none."""
    max_tokens: int | None
    """Generation limit; None sends none."""
    constraint: Mapping[str, object] | None = None
    """JSON schema of structured output (the backend's ``response_format``); None: free text."""
    top_p: float | None = None
    """Nucleus sampling; None leaves the server's default."""
    thinking: bool | None = None
    """A thinking model's ``enable_thinking`` switch; None sends none (and the reply is not
    split at ``</think>``)."""


def under_test(kind: CallKind) -> bool:
    """Whether a call of ``kind`` goes to the model under test (else the judge's side)."""
    match kind:
        case CallKind.ANSWER | CallKind.CRITIQUE | CallKind.ALIGN:
            return True
        case CallKind.JUDGE | CallKind.EXTRACT:
            return False
        case _:
            assert_never(kind)


def constraint(
    kind: CallKind, protocol: Protocol, context: RunContext, item: Item
) -> Mapping[str, object] | None:
    """The structured output a call of ``kind`` asks for, if any."""
    match kind:
        case CallKind.ANSWER:
            return None
        case CallKind.CRITIQUE:
            return CRITIC_SCHEMA if protocol.structured_output else None
        case CallKind.ALIGN:
            return ALIGNER_SCHEMA if protocol.structured_output else None
        case CallKind.JUDGE:
            return RATING_SCHEMA if context.constrain_rating else None
        case CallKind.EXTRACT:
            return choice_schema(item.letters) if protocol.strict else None
        case _:
            assert_never(kind)


def _profile_limit(kind: CallKind, decoding: Decoding, protocol_limit: int | None) -> int | None:
    """The model under test's limit: the profile's own per-stage one, or the protocol's."""
    stages = decoding.stage_tokens
    if stages is None:
        return protocol_limit
    match kind:
        case CallKind.ANSWER:
            return stages.answer
        case CallKind.CRITIQUE:
            return stages.critic
        case CallKind.ALIGN:
            return stages.aligner
        case CallKind.JUDGE | CallKind.EXTRACT:
            return protocol_limit
        case _:
            assert_never(kind)


def _capped(limit: int | None, cap: int | None) -> int | None:
    """``limit`` under the run's ``--max-tokens`` cap (None: no limit, or no cap)."""
    if limit is None:
        return cap
    return min(limit, cap or limit)


def generation_config(
    kind: CallKind, protocol: Protocol, context: RunContext, item: Item, *, attempt: int = 0
) -> GenerationConfig:
    """How attempt number ``attempt`` (0: the first) of a call of ``kind`` about ``item`` in
    the run of ``context`` under ``protocol`` is decoded."""
    decoding = context.decoding
    retry_temperature = decoding.retry_temperature or STRICT_RETRY_TEMPERATURE
    protocol_limit = protocol.max_tokens(kind)
    schema = constraint(kind, protocol, context, item)
    if not under_test(kind):
        return GenerationConfig(
            temperature=retry_temperature if attempt else 0.0,
            seed=JUDGE_SEED + attempt,
            max_tokens=_capped(protocol_limit, decoding.max_tokens_cap),
            constraint=schema,
        )
    limit = None if decoding.uncapped else _profile_limit(kind, decoding, protocol_limit)
    thinking = decoding.thinking
    return GenerationConfig(
        temperature=retry_temperature if attempt else decoding.temperature,
        seed=None if decoding.seed is None else decoding.seed + attempt,
        max_tokens=_capped(limit, decoding.max_tokens_cap),
        constraint=schema,
        top_p=decoding.top_p,
        # Pref-Aligner stage 2 never thinks (aligner.py:104)
        thinking=None if thinking is None else thinking and kind is not CallKind.ALIGN,
    )
