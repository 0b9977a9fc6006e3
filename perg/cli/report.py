"""``perg report RUN [--against RUN] (--html FILE | --markdown)``: a run's report to attach.

The HTML file is one self-contained page (charts, tables, the changed rows) that opens
offline; ``--markdown`` prints the same as text (perg/run_report.py renders both).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from perg.errors import InputError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = subparsers.add_parser(
        "report", help="a run's report: HTML file or Markdown (metrics, comparison, changed rows)"
    )
    add_run_report_arguments(report)
    report.set_defaults(func=run_report)


def add_run_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the run to report on (the candidate with --against)")
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


def run_report(args: argparse.Namespace) -> int:
    from perg.config import Settings
    from perg.live.client import SinkClient
    from perg.run_report import build_report, render_html, render_markdown

    if args.html is None and not args.markdown:
        raise InputError("perg report: give --html FILE, --markdown, or both")
    if not 1 <= args.rows_per_cell <= 1000:
        raise InputError(f"--rows-per-cell must be from 1 to 1000, not {args.rows_per_cell}")
    if args.against == args.run:
        raise InputError(f"--against {args.against}: a run cannot be compared with itself")
    if args.html is not None and not args.html.parent.is_dir():
        raise InputError(f"--html {args.html}: the directory {args.html.parent} does not exist")
    report = build_report(
        SinkClient(Settings.load()), args.run, args.against, rows_per_cell=args.rows_per_cell
    )
    if args.html is not None:
        try:
            args.html.write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            raise InputError(f"--html {args.html}: cannot write: {exc.strerror}") from exc
    if args.markdown:
        print(render_markdown(report), end="")
    return 0
