"""``perg report``: reports built from the results store (the sink's API, else its file).

Two modes:
``perg report RUN [--against RUN] (--html FILE | --markdown)``: one run's report to attach (a
self-contained HTML page that opens offline, or Markdown text: perg/run_report.py), with the
comparison and the changed rows against a reference;
``perg report --paper RUN [RUN...] [--out DIR]``: the paper's tables (Markdown, LaTeX) and
figures (PNG) across runs, one run per model (perg/paper_report.py).

Exit codes: 0 written; 2 bad input (a run without stored results, an unwritable file or
folder); 3 neither the sink nor the results file can be read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from perg.cli.client import SinkClient
from perg.config import Settings
from perg.errors import InputError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "report",
        help="a run's report (HTML or Markdown), or the paper's tables and figures (--paper)",
        description="Write reports of stored runs, read from the sink (PERG_SINK_URL) or, when "
        "none answers, from the results file (PERG_DB). Exit codes: 0 written, 2 bad input, "
        "3 no sink and no results file.",
    )
    add_run_report_arguments(parser)
    parser.add_argument(
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
        help="with --paper: folder the files are written to (default ./perg-report)",
    )
    parser.set_defaults(func=run)


def add_run_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", nargs="?", help="the run to report on (the candidate with --against)"
    )
    parser.add_argument(
        "--against", metavar="RUN", help="a reference run: add the comparison and the changed rows"
    )
    parser.add_argument(
        "--html", type=Path, metavar="FILE", help="write one self-contained HTML file"
    )
    parser.add_argument("--markdown", action="store_true", help="print the report as Markdown")
    parser.add_argument(
        "--rows-per-cell",
        type=int,
        default=20,
        metavar="N",
        help="changed rows listed per cell and direction (default 20)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.paper is not None:
        if args.run is not None or args.html is not None or args.markdown or args.against:
            raise InputError("--paper RUN... takes its runs itself: no RUN, --against, --html "
                             "or --markdown with it")  # fmt: skip
        for path in paper(args, settings):
            print(path)
        return 0
    return run_report(args, settings)


def run_report(args: argparse.Namespace, settings: Settings) -> int:
    from perg.run_report import build_report, render_html, render_markdown

    if args.run is None:
        raise InputError("give a RUN (with --html FILE or --markdown), or --paper RUN...")
    if args.html is None and not args.markdown:
        raise InputError("give --html FILE, --markdown, or both")
    if not 1 <= args.rows_per_cell <= 1000:
        raise InputError(f"--rows-per-cell must be from 1 to 1000, not {args.rows_per_cell}")
    if args.against == args.run:
        raise InputError(f"--against {args.against}: a run cannot be compared with itself")
    if args.html is not None and not args.html.parent.is_dir():
        raise InputError(f"--html {args.html}: the directory {args.html.parent} does not exist")
    report = build_report(
        SinkClient(settings), args.run, args.against, rows_per_cell=args.rows_per_cell
    )
    if args.html is not None:
        try:
            args.html.write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            raise InputError(f"--html {args.html}: cannot write: {exc.strerror}") from exc
    if args.markdown:
        print(render_markdown(report), end="")
    return 0


def paper(args: argparse.Namespace, settings: Settings) -> list[Path]:
    from perg.paper_report import RunMetrics, build_report, write_report  # loads matplotlib

    client = SinkClient(settings)
    runs = []
    for run_id in dict.fromkeys(args.paper):
        rows = client.metrics(run_id)
        if not rows:
            raise InputError(f"--paper: no stored results for run {run_id!r}")
        status = client.status(run_id) or {}
        runs.append(RunMetrics(label=_label(run_id, status.get("model")), rows=rows))
    out: Path = args.out
    try:
        return write_report(build_report(runs), out)
    except OSError as exc:
        raise InputError(f"--out: cannot write to {out}: {exc.strerror or exc}") from exc


def _label(run_id: str, model: object) -> str:
    """The model's name, with the run id when they differ (two runs may test one model)."""
    return run_id if not model or model == run_id else f"{model} ({run_id})"
