"""Loaded by every Python process the test suite starts (tests/conftest.py puts this folder on
PYTHONPATH): writes each traceback the process prints into ``$TESTS_TRACEBACK_DIR``.

Three ways a Python process prints one: an exception nothing caught (``sys.excepthook``), one
that ended a thread (``threading.excepthook``), and a log record with ``exc_info`` (every
``logger.exception``, including asyncio's "Task exception was never retrieved"). conftest.py
reads the folder when the session ends and fails the run on any of them, so "no traceback on any
input" holds for the whole suite's stderr, not only for the bad-input corpus.
"""

import os
import sys

_FOLDER = os.environ.get("TESTS_TRACEBACK_DIR")


def _install(folder: str) -> None:
    import itertools
    import logging
    import threading
    import traceback
    from pathlib import Path

    count = itertools.count()
    command = " ".join(sys.orig_argv)
    with open(Path(folder) / "processes.log", "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()} {command}\n")

    def record(kind: str, text: str) -> None:
        path = Path(folder) / f"{os.getpid()}-{next(count)}.txt"
        path.write_text(f"{kind}\n{command}\n{text}", encoding="utf-8")

    previous_excepthook = sys.excepthook

    def excepthook(kind: type[BaseException], value: BaseException, tb: object) -> None:
        record("uncaught", "".join(traceback.format_exception(value)))
        previous_excepthook(kind, value, tb)  # type: ignore[arg-type]

    previous_thread_hook = threading.excepthook

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            record("thread", "".join(traceback.format_exception(args.exc_value)))
        previous_thread_hook(args)

    format_exception = logging.Formatter.formatException

    def logged(self: logging.Formatter, exc_info: object) -> str:
        text = format_exception(self, exc_info)  # type: ignore[arg-type]
        record("logged", text)
        return text

    sys.excepthook = excepthook
    threading.excepthook = thread_hook
    logging.Formatter.formatException = logged  # type: ignore[method-assign]


if _FOLDER:
    _install(_FOLDER)
