"""``perg report``: reports built from the results store (the sink's API, else its file).

One mode per flag, each a function of the parsed arguments in ``MODES``:
``--paper RUN [RUN...]`` writes the paper's tables (Markdown, LaTeX) and figures (PNG) across
runs, one run per model (perg/paper_report.py).

Exit codes: 0 written; 2 bad input (a run without stored results, an unwritable folder);
3 neither the sink nor the results file can be read.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from perg.config import Settings
from perg.errors import InputError
from perg.live.client import SinkClient


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write reports of stored runs (the paper's tables and figures)",
        description="Write reports of stored runs, read from the sink (PERG_SINK_URL) or, when "
        "none answers, from the results file (PERG_DB). Exit codes: 0 written, 2 bad input, "
        "3 no sink and no results file.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--paper",
        nargs="+",
        metavar="RUN",
        help="the paper's per-source tables (Markdown and LaTeX) and figures (PNG) across "
        "RUNs, one run per model",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("perg-report"),
        help="folder the files are written to (default ./perg-report)",
    )
    parser.set_defaults(func=run)


def paper(args: argparse.Namespace) -> list[Path]:
    from perg.paper_report import RunMetrics, build_report, write_report  # loads matplotlib

    client = SinkClient(Settings.load())
    runs = []
    for run_id in dict.fromkeys(args.paper):
        rows = client.metrics(run_id)
        if not rows:
            raise InputError(f"--paper: no stored results for run {run_id!r}")
        status = client.status(run_id) or {}
        runs.append(RunMetrics(label=_label(run_id, status.get("model")), rows=rows))
    return _write(lambda: write_report(build_report(runs), args.out), args.out)


def _label(run_id: str, model: object) -> str:
    """The model's name, with the run id when they differ (two runs may test one model)."""
    return run_id if not model or model == run_id else f"{model} ({run_id})"


def _write(write: Callable[[], list[Path]], out: Path) -> list[Path]:
    try:
        return write()
    except OSError as exc:
        raise InputError(f"--out: cannot write to {out}: {exc.strerror or exc}") from exc


MODES: dict[str, Callable[[argparse.Namespace], list[Path]]] = {"paper": paper}


def run(args: argparse.Namespace) -> int:
    mode = next(name for name in MODES if getattr(args, name) is not None)
    for path in MODES[mode](args):
        print(path)
    return 0
