"""``perg demo``: a real run on the embedded CPU model, end to end, in one command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from perg.cli.submit import at_least, csv_list
from perg.config import Settings
from perg.demo import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_METHODS,
    DEFAULT_ROWS,
    DEFAULT_SETTINGS,
    EMBEDDED_MODEL,
    DemoOptions,
    run_demo,
)
from perg.errors import PergError
from perg.protocol import METHODS, SETTINGS
from perg.runs import DEFAULT_PROTOCOL


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="start Kafka, the embedded model and the services; run and score a sample",
        description="Run a real PERG evaluation on this machine (no GPU needed): Kafka, the "
        f"embedded {EMBEDDED_MODEL} model server and the four services are started, a "
        "stratified sample is evaluated with live progress, and the metrics are printed. By "
        "default: the relevant setting, zero-shot against Pref-Aligner, a few minutes on 2 cores.",
    )
    size = parser.add_mutually_exclusive_group()
    sample = f"stratified sample of N rows by source (default {DEFAULT_ROWS})"
    size.add_argument("--sample", type=at_least(1), default=DEFAULT_ROWS, help=sample)
    size.add_argument("--rows", help="as perg submit: N (the first N rows) or ids and ranges")
    size.add_argument("--full", action="store_true", help="all 7,208 rows")
    parser.add_argument("--seed", type=int, default=0, help="sample seed")
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument("--all", action="store_true",
                      help="every setting and method (3 x 5; ~7x the default's time)")  # fmt: skip
    grid.add_argument("--settings", type=csv_list(SETTINGS), default=DEFAULT_SETTINGS,
                      help=f"default {','.join(DEFAULT_SETTINGS)}")  # fmt: skip
    parser.add_argument("--methods", type=csv_list(METHODS), default=DEFAULT_METHODS,
                        help=f"default {','.join(DEFAULT_METHODS)}")  # fmt: skip
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL, help="paper, strict, or a file")
    parser.add_argument("--max-tokens", type=at_least(1), default=DEFAULT_MAX_TOKENS,
                        help=f"cap per model call (default {DEFAULT_MAX_TOKENS})")  # fmt: skip
    free = "let the judge reply freely (default: only <answer>N</answer>)"
    parser.add_argument("--free-judge", action="store_true", help=free)
    parser.add_argument("--by-source", action="store_true", help="also print metrics per source")
    parser.add_argument("--workdir", type=Path, default=Path("perg-results/demo"),
                        help="results, logs and local Kafka state")  # fmt: skip
    parser.add_argument("--model-url", help="use this OpenAI-compatible server instead")
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="model name at --model-url")
    parser.add_argument("--judge-url", help="an OpenAI-compatible judge server (default: the "
                        "model under test, too weak a judge to inform AFR and RER)")  # fmt: skip
    parser.add_argument("--judge-model", help="model name at --judge-url (default: --model)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    options = DemoOptions(
        workdir=args.workdir,
        sample=None if args.full else args.sample,
        rows=args.rows,
        seed=args.seed,
        settings=SETTINGS if args.all else args.settings,
        methods=METHODS if args.all else args.methods,
        protocol=args.protocol,
        max_tokens=args.max_tokens,
        model_url=args.model_url,
        model=args.model,
        constrain_judge=not args.free_judge,
        by_source=args.by_source,
        judge_url=args.judge_url,
        judge_model=args.judge_model,
    )
    try:
        return run_demo(options, Console(), settings)
    except PergError:
        raise  # bad input (exit 2) or Kafka unreachable (exit 3): perg.cli reports it
    except (RuntimeError, TimeoutError, OSError) as exc:  # a server that failed to start
        print(f"perg demo: {exc}", file=sys.stderr)
        return 1
