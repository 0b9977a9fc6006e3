"""The ``perg`` command line: one module per sub-command, each exposing ``register``.

Exit codes of every command: 0 success; 1 a check that ran and failed (``perg gate`` found a
regression, a run did not complete in time); 2 bad input (a flag, a file, a row: the message
names which); 3 something needed is unavailable (the Kafka broker, the sink, a model server).

The configuration (:class:`perg.config.Settings`) is loaded once, here, and passed to the
command, whose flags override it (``dataclasses.replace``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from perg.config import Settings, load_settings
from perg.errors import PergError

__all__ = ["build_parser", "main"]

# Sub-command modules, in the order ``perg --help`` lists them. Each defines
# ``register(subparsers) -> None`` and sets ``func`` (args, settings -> exit code) on its parser.
COMMAND_MODULES = (
    "demo",
    "submit",
    "status",
    "score",
    "report",
    "sql",
    "compare",
    "plan",
    "accept",
    "history",
    "cancel",
    "prompts",
    "worker",
)
EPILOG = "exit codes: 0 ok, 1 check failed (gate, timeout), 2 bad input, 3 service unavailable"

Handler = Callable[[argparse.Namespace, Settings], int]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``perg`` and all its sub-commands, or only of ``command`` (one
    of COMMAND_MODULES): each command module imports what its command needs, and ``perg
    submit`` need not load the SQL engine, nor ``perg worker`` the dataset loader."""
    parser = argparse.ArgumentParser(
        prog="perg",
        description="PERG Stream: robust personalization evaluation of deployed LLMs.",
        epilog=EPILOG,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES if command is None else (command,):
        importlib.import_module(f"perg.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``perg`` with ``argv`` (default: ``sys.argv[1:]``) and return its exit code.

    An expected failure (:class:`~perg.errors.PergError`) becomes one message on stderr and
    its kind's exit code; anything else is a bug and keeps its traceback.
    """
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(command if command in COMMAND_MODULES else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    handler: Handler = args.func
    try:
        return handler(args, load_settings())
    except PergError as exc:
        # "perg prompts render: ...": a command with sub-commands stores them as <command>_command
        name = " ".join(
            filter(None, (args.command, getattr(args, f"{args.command}_command", None)))
        )
        print(f"perg {name}: {exc}", file=sys.stderr)
        return exc.exit_code
