"""``perg submit``: create a run and print its id (and only that) on stdout."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import get_args

from perg.client import Backend, Endpoint
from perg.config import Settings
from perg.dataset import DatasetError
from perg.kafka import ensure_topics
from perg.protocol import METHODS, SETTINGS
from perg.runs import RunRequest, plan_run, publish_run
from schemas import Decoding


def csv_list(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(
                f"unknown {unknown or 'empty list'}; choose from {','.join(allowed)}"
            )
        return values

    return parse


def add_endpoint_args(parser: argparse.ArgumentParser) -> None:
    """Model-under-test and judge endpoint flags (shared with ``perg demo``)."""
    backends = get_args(Backend)
    parser.add_argument("--model-url", required=True, help="OpenAI-compatible base URL (…/v1)")
    parser.add_argument("--model", required=True, help="model name the server expects")
    parser.add_argument("--model-backend", default="openai", choices=backends)
    parser.add_argument("--model-token-env", help="NAME of the env var holding its API token")
    parser.add_argument("--judge-url", required=True)
    parser.add_argument("--judge-model", required=True)
    parser.add_argument("--judge-backend", default="openai", choices=backends)
    parser.add_argument("--judge-token-env")
    constrain = "the judge may reply only <answer>N</answer> (structured output)"
    parser.add_argument("--constrain-judge", action="store_true", help=constrain)
    parser.add_argument("--max-in-flight", type=int, default=64, help="per endpoint")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    rows = parser.add_mutually_exclusive_group()
    rows.add_argument("--rows", help="N (the first N rows) or ids and ranges: 0-29,817-846,2038")
    rows.add_argument("--sample", type=int, help="stratified sample of N rows by source")
    parser.add_argument("--seed", type=int, default=0, help="sample seed")
    parser.add_argument("--settings", type=csv_list(SETTINGS), default=SETTINGS)
    parser.add_argument("--methods", type=csv_list(METHODS), default=METHODS)
    parser.add_argument("--protocol", default="paper", help="paper, strict, or a protocol file")
    parser.add_argument("--layout", choices=("system", "merged"), default="system",
                        help="merged: the model's chat template has no system role")  # fmt: skip
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--decode-seed", type=int, default=42)
    parser.add_argument("--max-tokens", type=int, help="cap every stage's max_tokens")
    parser.add_argument("--dataset", type=Path, help="PERGData CSV/JSONL (default: data dir)")
    parser.add_argument(
        "--skip-invalid", action="store_true", help="evaluate the valid rows; report the bad ones"
    )
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default $PERG_KAFKA)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("submit", help="create a run; prints its run_id")
    add_endpoint_args(parser)
    add_run_args(parser)
    parser.set_defaults(func=run)


def request_from_args(args: argparse.Namespace) -> RunRequest:
    def endpoint(url: str, model: str, backend: Backend, token_env: str | None) -> Endpoint:
        if token_env and token_env not in os.environ:
            raise ValueError(f"--*-token-env names {token_env}, which is not set here")
        return Endpoint(url.rstrip("/"), model, backend, token_env, args.max_in_flight)

    return RunRequest(
        model=endpoint(args.model_url, args.model, args.model_backend, args.model_token_env),
        judge=replace(
            endpoint(args.judge_url, args.judge_model, args.judge_backend, args.judge_token_env),
            constrain_rating=args.constrain_judge,
        ),
        protocol=args.protocol,
        settings=args.settings,
        methods=args.methods,
        rows=args.rows,
        sample=args.sample,
        seed=args.seed,
        decoding=Decoding(args.temperature, args.decode_seed, args.max_tokens),
        layout=args.layout,
        dataset_path=args.dataset,
        skip_invalid=args.skip_invalid,
    )


def run(args: argparse.Namespace) -> int:
    if args.bootstrap:
        os.environ["PERG_KAFKA"] = args.bootstrap
    settings = Settings.load()
    try:
        spec, work = plan_run(request_from_args(args), settings)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"perg submit: {exc}", file=sys.stderr)
        return 2

    async def go() -> None:
        await ensure_topics(settings)
        await publish_run(spec, work, settings)

    asyncio.run(go())
    print(spec.context.run_id)
    return 0
