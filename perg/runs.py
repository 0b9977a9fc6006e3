"""Creating a run: choose the rows, pin dataset and protocol by hash, publish spec and work."""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer

from perg.client import Endpoint
from perg.config import Settings
from perg.dataset import load_dataset, select_rows, stratified_sample
from perg.protocol import Method, RoleLayout, Setting, load_protocol
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
    decoding: Decoding = field(default_factory=Decoding)
    layout: RoleLayout = "system"
    dataset_path: Path | None = None  # default: <data dir>/pergdata.csv
    skip_invalid: bool = False  # load the valid rows of a dataset with bad rows (reported)


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
    context = RunContext(
        run_id=new_run_id(request.model.model),
        model=request.model,
        judge=request.judge,
        protocol=request.protocol,
        protocol_sha256=protocol.sha256,
        decoding=request.decoding,
        layout=request.layout,
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
    )
    work = [WorkItem(context, item, spec.settings, spec.methods) for item in items]
    return spec, work


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
