"""``perg sql "SELECT ..."``: a read-only query over the live results (or the results file)."""

from __future__ import annotations

import argparse
import csv
import sys
from typing import Any

import orjson
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from perg.cli.client import SinkClient
from perg.config import Settings
from perg.textsafe import printable


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sql",
        help="read-only SQL over the live results (tables, outcomes and metric views)",
        description="Run one read-only SELECT against the sink's live database (or, when no "
        "sink answers, the results file). See docs/sql.md for the views.",
    )
    parser.add_argument("query", help='one SELECT statement, e.g. "SELECT * FROM runs"')
    parser.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        help="output format (default: table on a terminal, csv otherwise: whole values)",
    )
    parser.set_defaults(func=run)


def _cell(value: Any) -> Text:
    if value is None:
        return Text("NULL", style="dim")
    if isinstance(value, float):
        return Text(f"{value:.6g}")
    return Text(printable(str(value)))  # Text: stored text is never read as rich markup


def run(args: argparse.Namespace, settings: Settings) -> int:
    result = SinkClient(settings).sql(args.query)
    on_terminal = sys.stdout.isatty()
    output = args.format or ("table" if on_terminal else "csv")
    if output == "json":  # JSON escapes every control character itself
        sys.stdout.write(orjson.dumps(result, default=str).decode() + "\n")
    elif output == "csv":  # whole values; control characters escaped only for a terminal
        clean = printable if on_terminal else str
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([clean(c) for c in result["columns"]])
        writer.writerows(
            [clean("" if v is None else str(v)) for v in row] for row in result["rows"]
        )
    else:
        headers = (Column(header=_cell(c)) for c in result["columns"])
        table = Table(*headers, caption=f"{len(result['rows'])} row(s)")
        for row in result["rows"]:
            table.add_row(*(_cell(v) for v in row))
        Console().print(table)
    return 0
