"""``perg sql "SELECT ..."``: a read-only query over the live results (or the results file)."""

from __future__ import annotations

import argparse
import csv
import sys
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from perg.config import Settings
from perg.live.client import SinkClient


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sql",
        help="read-only SQL over the live results (tables, outcomes and metric views)",
        description="Run one read-only SELECT against the sink's live database (or, when no "
        "sink answers, the results file). See docs/sql.md for the views.",
    )
    parser.add_argument("query", help='one SELECT statement, e.g. "SELECT * FROM runs"')
    parser.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format"
    )
    parser.set_defaults(func=run)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def run(args: argparse.Namespace) -> int:
    result = SinkClient(Settings.load()).sql(args.query)
    if args.format == "json":
        sys.stdout.write(orjson.dumps(result, default=str).decode() + "\n")
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result["columns"])
        writer.writerows(result["rows"])
    else:
        table = Table(*result["columns"], caption=f"{len(result['rows'])} row(s)")
        for row in result["rows"]:
            table.add_row(*(_cell(v) for v in row))
        Console().print(table)
    return 0
