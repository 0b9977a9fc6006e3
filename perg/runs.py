"""Creating a run: choose the rows, pin dataset and protocol by hash, publish spec and work."""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer

from perg.client import Endpoint
from perg.config import Settings
from perg.dataset import load_dataset, select_rows, stratified_sample
from perg.extraction import Extractor, choose_extractor
from perg.protocol import DecodingProfile, Method, Protocol, RoleLayout, Setting, load_protocol
from schemas import Decoding, RunContext, RunSpec, WorkItem, partition_key
from schemas.topics import RUNS, WORK

log = logging.getLogger("perg.runs")


@dataclass(frozen=True)
class RunRequest:
    model: Endpoint
    judge: Endpoint
    protocol: str = "paper"
    settings: tuple[Setting, ...] = ("relevant", "mixed", "irrelevant")
    methods: tuple[Method, ...] = ("zero_shot", "cot", "icl", "self_critic", "pref_aligner")
    rows: str | None = None  # "N" (first N) or ids and ranges "0-29,817"
    sample: int | None = None  # stratified by source
    seed: int = 0
    decoding: Decoding | None = None  # None: the protocol's profile for the model's family
    layout: RoleLayout = "system"
    dataset_path: Path | None = None  # default: <data dir>/pergdata.csv
    skip_invalid: bool = False  # load the valid rows of a dataset with bad rows (reported)
    decoding_profile: str | None = None  # a perg.protocol.DECODING_PROFILES name; None: auto
    extractor: Extractor | None = None  # None: llm with an extractor endpoint, else rules
    extractor_endpoint: Endpoint | None = None  # llm extractor (default: the judge's endpoint)
    lora_endpoint: Endpoint | None = None
    repeat_baseline: bool = False  # noise floor: the no-preference baseline twice
    # Overrides of the profile (recorded as profile "<name>+override" when they change it).
    temperature: float | None = None
    decode_seed: int | None = None
    max_tokens_cap: int | None = None


def decoding_from_profile(profile: DecodingProfile, max_tokens_cap: int | None) -> Decoding:
    """The record form of a decoding profile."""
    return Decoding(
        temperature=profile.temperature,
        seed=profile.seed,
        max_tokens_cap=max_tokens_cap,
        profile=profile.name,
        uncapped=not profile.capped,
        top_p=profile.top_p,
        retry_temperature=profile.retry_temperature,
    )


def new_run_id(model: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:40] or "model"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{slug}-{stamp}-{secrets.token_hex(2)}"


def plan_run(request: RunRequest, settings: Settings) -> tuple[RunSpec, list[WorkItem]]:
    """Resolve a request into its spec and work items (raises ValueError on bad input)."""
    if request.rows is not None and request.sample is not None:
        raise ValueError("give either rows or a sample, not both")
    dataset = load_dataset(
        request.dataset_path or settings.data_dir / "pergdata.csv",
        skip_invalid=request.skip_invalid,
    )
    for problem in dataset.skipped:
        log.warning("skipped invalid row: %s", problem)
    protocol = load_protocol(request.protocol, settings.data_dir)
    if request.sample is not None:
        items = stratified_sample(dataset, request.sample, request.seed)
        selection = f"stratified sample of {request.sample}, seed {request.seed}"
    elif request.rows is not None:
        items = select_rows(dataset, request.rows)
        selection = f"rows {request.rows}"
    else:
        items = list(dataset.items)
        selection = "all rows"
    if dataset.skipped:
        selection += f" ({len(dataset.skipped)} invalid rows skipped)"
    decoding = request.decoding or _decoding(request, protocol)
    context = RunContext(
        run_id=new_run_id(request.model.model),
        model=request.model,
        judge=request.judge,
        protocol=request.protocol,
        protocol_sha256=protocol.sha256,
        decoding=decoding,
        layout=request.layout,
        extractor=choose_extractor(
            request.extractor,
            extractor_endpoint=request.extractor_endpoint is not None,
            lora_endpoint=request.lora_endpoint is not None,
        ),
        extractor_endpoint=request.extractor_endpoint,
        lora_endpoint=request.lora_endpoint,
        repeat_baseline=request.repeat_baseline,
    )
    spec = RunSpec(
        context=context,
        created_at=datetime.now(UTC).isoformat(),
        dataset_path=str(dataset.path),
        dataset_sha256=dataset.sha256,
        selection=selection,
        row_ids=[item.row_id for item in items],
        settings=list(request.settings),
        methods=list(request.methods),
        followed_threshold=protocol.judge_threshold,
    )
    work = [WorkItem(context, item, spec.settings, spec.methods) for item in items]
    return spec, work


def _decoding(request: RunRequest, protocol: Protocol) -> Decoding:
    if request.decoding_profile is not None:
        profile = protocol.decoding_profile(request.decoding_profile)
    else:
        profile = protocol.default_decoding_profile(request.model.model)
    temperature = profile.temperature if request.temperature is None else request.temperature
    seed = profile.seed if request.decode_seed is None else request.decode_seed
    if (temperature, seed) != (profile.temperature, profile.seed):
        name = profile.name + "+override"
        profile = dataclasses.replace(profile, name=name, temperature=temperature, seed=seed)
    return decoding_from_profile(profile, request.max_tokens_cap)


async def publish_run(spec: RunSpec, work: list[WorkItem], settings: Settings) -> None:
    """Publish the spec (compacted topic, keyed by run) and every work item, then flush."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, acks="all", linger_ms=5)
    await producer.start()
    try:
        run_id = spec.context.run_id
        await producer.send_and_wait(
            RUNS.name(settings.topic_prefix), spec.encode(), key=run_id.encode()
        )
        for item in work:
            await producer.send(
                WORK.name(settings.topic_prefix),
                item.encode(),
                key=partition_key(run_id, item.item.row_id),
            )
        await producer.flush()
    finally:
        await producer.stop()
