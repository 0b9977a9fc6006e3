"""``perg submit``: create a run and print its id (and only that) on stdout.

Exit codes: 0 submitted; 2 bad input (a flag, the dataset file or the protocol: the message
names the file, line and field); 3 the Kafka broker cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import get_args

from perg.client import Backend, Endpoint
from perg.config import Settings, bootstrap_servers, is_http_url
from perg.demo_report import METHOD_NAMES
from perg.errors import InputError
from perg.extraction import EXTRACTORS
from perg.hosts import HostNotAllowed
from perg.kafka import ensure_topics
from perg.protocol import DECODING_PROFILES, METHODS, ROLE_LAYOUTS, SETTINGS
from perg.runs import DEFAULT_PROTOCOL, RunRequest, plan_run, publish_run
from schemas import RunContext

# the names the README and the report print, as ids: "chain-of-thought" -> "cot"
_DISPLAYED = {_name.lower(): _id for _id, _name in METHOD_NAMES.items()}


def _id(name: str) -> str:
    lowered = name.lower()
    return _DISPLAYED.get(lowered, lowered.replace("-", "_").replace(" ", "_"))


def csv_list(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated list of ``allowed`` ids, also spelt as the README
    and the paper write them (``zero-shot``, ``Pref-Aligner``, ``CoT``)."""

    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        ids = tuple(_id(v) for v in values)
        unknown = [v for v, id_ in zip(values, ids, strict=True) if id_ not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(
                f"unknown {unknown or 'empty list'}; choose from {','.join(allowed)}"
            )
        return tuple(dict.fromkeys(ids))

    return parse


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


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
    parser.add_argument("--extractor", choices=EXTRACTORS,
                        help="answer extractor: rules (no model), llm (the paper's prompt), lora "
                        "(the paper's 1-token LoRA extractor, llm fallback); default lora with "
                        "--lora-url, llm with --extractor-url, else rules")  # fmt: skip
    parser.add_argument("--extractor-url", help="llm extractor base URL (default: the judge's)")
    parser.add_argument("--extractor-model", help="llm extractor model name")
    parser.add_argument("--extractor-backend", default="openai", choices=backends)
    parser.add_argument("--extractor-token-env")
    parser.add_argument("--lora-url", help="completions endpoint serving the LoRA extractor")
    parser.add_argument("--lora-model", help="its model name (e.g. the LoRA adapter's)")
    parser.add_argument("--lora-token-env")
    constrain = "the judge may reply only <answer>N</answer> (structured output)"
    parser.add_argument("--constrain-judge", action="store_true", help=constrain)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    rows = parser.add_mutually_exclusive_group()
    rows.add_argument("--rows", help="N (the first N rows) or ids and ranges: 0-29,817-846,2038")
    rows.add_argument("--sample", type=at_least(1), help="stratified sample of N rows by source")
    parser.add_argument("--seed", type=int, default=0, help="sample seed")
    parser.add_argument("--settings", type=csv_list(SETTINGS), default=SETTINGS)
    parser.add_argument("--methods", type=csv_list(METHODS), default=METHODS)
    parser.add_argument(
        "--protocol", default=DEFAULT_PROTOCOL, help="paper, strict, or a protocol file"
    )
    parser.add_argument(
        "--layout",
        choices=ROLE_LAYOUTS,
        help="merged: the system text in the user turn (a chat template without "
        "a system role); inst: one raw [INST] prompt on the completions endpoint "
        "(Janus); default: the model family's, as published; recorded on the run",
    )
    parser.add_argument("--thinking", choices=("on", "off"),
                        help="a thinking model's switch (Qwen3: chat_template_kwargs "
                        "enable_thinking; default off); Pref-Aligner stage 2 never "
                        "thinks")  # fmt: skip
    parser.add_argument(
        "--decoding-profile",
        choices=tuple(DECODING_PROFILES),
        help="decoding of the model under test (default: paper picks the profile of the "
        "model's family, strict its own); recorded on the run",
    )
    parser.add_argument(
        "--temperature", type=non_negative_float, help="override the profile's temperature"
    )
    parser.add_argument("--decode-seed", type=int, help="override the profile's seed")
    parser.add_argument("--max-tokens", type=at_least(1), help="cap every stage's max_tokens")
    parser.add_argument(
        "--repeat-baseline",
        action="store_true",
        help="generate the no-preference baseline twice: the noise floor",
    )
    parser.add_argument("--dataset", type=Path, help="PERGData CSV/JSONL (default: data dir)")
    parser.add_argument(
        "--skip-invalid", action="store_true", help="evaluate the valid rows; report the bad ones"
    )
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default $PERG_KAFKA)")
    parser.add_argument(
        "--lineage",
        metavar="NAME",
        help="the deployed model this run evaluates (letters, digits, ._-)",
    )
    parser.add_argument(
        "--version",
        metavar="LABEL",
        help="the version under test: an image tag, a git SHA, a revision",
    )
    parser.add_argument(
        "--shuffle-seed",
        type=int,
        metavar="N",
        help="seed of the rows' order, shuffled within sources (default --seed)",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="create a run; prints its run_id",
        description="Create a run and print its run_id. Exit codes: 0 submitted, 2 bad input "
        "(the message names the flag, or the file, line and field), 3 Kafka unreachable.",
    )
    add_endpoint_args(parser)
    add_run_args(parser)
    parser.set_defaults(func=run)


def request_from_args(args: argparse.Namespace) -> RunRequest:
    def endpoint(
        role: str, url: str, model: str, backend: Backend, token_env: str | None
    ) -> Endpoint:
        if not is_http_url(url):
            raise InputError(f"--{role}-url {url!r} is not an http:// or https:// URL")
        if token_env and token_env not in os.environ:
            raise InputError(f"--{role}-token-env names {token_env}, which is not set here")
        return Endpoint(url.rstrip("/"), model, backend, token_env)

    extractor = lora = None
    if args.extractor_url or args.extractor_model:
        if not (args.extractor_url and args.extractor_model):
            raise InputError("give --extractor-url and --extractor-model together")
        extractor = endpoint("extractor", args.extractor_url, args.extractor_model,
                             args.extractor_backend, args.extractor_token_env)  # fmt: skip
    if args.lora_url or args.lora_model:
        if not (args.lora_url and args.lora_model):
            raise InputError("give --lora-url and --lora-model together")
        lora = endpoint("lora", args.lora_url, args.lora_model, "openai", args.lora_token_env)

    return RunRequest(
        model=endpoint(
            "model", args.model_url, args.model, args.model_backend, args.model_token_env
        ),
        judge=endpoint(
            "judge", args.judge_url, args.judge_model, args.judge_backend, args.judge_token_env
        ),
        constrain_rating=args.constrain_judge,
        protocol=args.protocol,
        settings=args.settings,
        methods=args.methods,
        rows=args.rows,
        sample=args.sample,
        seed=args.seed,
        decoding_profile=args.decoding_profile,
        temperature=args.temperature,
        decode_seed=args.decode_seed,
        max_tokens_cap=args.max_tokens,
        extractor=args.extractor,
        extractor_endpoint=extractor,
        lora_endpoint=lora,
        repeat_baseline=args.repeat_baseline,
        layout=args.layout,
        thinking=None if args.thinking is None else args.thinking == "on",
        dataset_path=args.dataset,
        skip_invalid=args.skip_invalid,
        lineage=args.lineage,
        version=args.version,
        shuffle_seed=args.shuffle_seed,
    )


def warn_about_hosts(context: RunContext, settings: Settings) -> None:
    """Warn (stderr) about URLs this machine's PERG_MODEL_HOSTS refuses: workers with the same
    list will dead-letter the run. The workers decide; theirs may differ."""
    for role, endpoint in (("model", context.model), ("judge", context.judge),
                           ("extractor", context.extractor_endpoint),
                           ("lora", context.lora_endpoint)):  # fmt: skip
        if endpoint is None:
            continue
        try:
            settings.model_hosts.check(endpoint.base_url)
        except HostNotAllowed as exc:
            print(f"perg submit: warning: --{role}-url: {exc}; workers with this allow-list "
                  "will dead-letter the run", file=sys.stderr)  # fmt: skip


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.bootstrap is not None:
        settings = replace(settings, kafka=bootstrap_servers(args.bootstrap, "--bootstrap"))
    spec, work = plan_run(request_from_args(args), settings)
    warn_about_hosts(spec.context, settings)
    if not args.verbose:  # an unreachable broker is reported in one line, not per attempt
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def go() -> None:
        await ensure_topics(settings)
        await publish_run(spec, work, settings)

    asyncio.run(go())
    print(spec.context.run_id)
    return 0
