"""The ``perg`` command line: one module per sub-command, each exposing ``register``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

# Sub-command modules, in the order ``perg --help`` lists them. Each defines
# ``register(subparsers) -> None`` and sets ``func`` (args -> exit code) on its parser.
COMMAND_MODULES = (
    "demo",
    "submit",
    "status",
    "score",
    "sql",
    "compare",
    "prompts",
    "worker",
)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perg", description="PERG Stream: robust personalization evaluation of deployed LLMs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"perg.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"perg.cli.{name}":
                continue  # command not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    handler: Handler = args.func
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
