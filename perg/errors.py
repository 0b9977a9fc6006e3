"""The failures perg expects and reports to its user, and the exit code of each kind.

Every expected failure is a :class:`PergError` of one of two kinds:

- :class:`InputError` (exit code 2): what the user gave is wrong, a file, a flag, a row, a
  query. The message says what and where (``path:line: field: problem``). Also a
  :class:`ValueError`, so code that catches bad values keeps working.
- :class:`UnavailableError` (exit code 3): something perg needs is not reachable right now: the
  Kafka broker, the sink, a model server, the results file. Retrying later may succeed.

The command line (``perg.cli.main``) turns any ``PergError`` into one message on stderr and its
``exit_code``; anything else is a bug and keeps its traceback. Exit code 1 stays for a check
that ran and failed (a regression gate, a run that did not complete in time).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "EXIT_FAILED",
    "EXIT_INPUT",
    "EXIT_UNAVAILABLE",
    "InputError",
    "PergError",
    "UnavailableError",
    "first_line",
]

EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_UNAVAILABLE = 3


class PergError(Exception):
    """An expected failure with a message for the user; subclass one of the two kinds."""

    exit_code: ClassVar[int] = EXIT_FAILED


class InputError(PergError, ValueError):
    """Bad input: the message names the file, line and field (or the flag) at fault."""

    exit_code: ClassVar[int] = EXIT_INPUT


class UnavailableError(PergError):
    """A service, broker or file perg needs cannot be reached; the message says which."""

    exit_code: ClassVar[int] = EXIT_UNAVAILABLE


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (a library's may run on for pages), else its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
