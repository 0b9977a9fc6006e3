"""``perg score``: BR / AFR / RER / PVR of a results file, with the SQL of the live sink.

Exit codes: 0 scored; 2 bad input (every value of the file is checked first: the message names
the file, line and column of the first bad one) or no stored results to read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb
import orjson

from perg.config import Settings
from perg.errors import InputError
from perg.live.client import SinkClient
from perg.metrics import compute_metrics, format_metrics_table, load_outcomes_file

JSON_KEYS = (
    "run_id",
    "setting",
    "method",
    "source",
    "n_rows",
    "n_qstar",
    "BR",
    "BR_lo",
    "BR_hi",
    "AFR",
    "AFR_lo",
    "AFR_hi",
    "RER",
    "RER_lo",
    "RER_hi",
    "PVR",
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score a results file (CSV, JSONL or Parquet of outcomes)",
        description="Score a results file, or a stored run. Exit codes: 0 scored, 2 bad input "
        "(the message names the file, line and column of the first bad value).",
    )
    parser.add_argument(
        "results", nargs="?", type=Path, help="outcomes file: .csv, .jsonl, .json, .parquet"
    )
    parser.add_argument("--run", help="score a run of the live sink (or of $PERG_DB) instead")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--run-name", help="run id to report (default: the file's, else offline)")
    parser.set_defaults(func=run)


def score_file(path: Path, run_name: str | None = None) -> list[dict[str, object]]:
    """Metrics by source (and pooled 'full') of an offline results file.

    :class:`~perg.errors.InputError` names the file, line and column of the first bad value.
    """
    with duckdb.connect() as con:
        load_outcomes_file(con, path, run_name=run_name)
        return compute_metrics(con)


def score_run(run_id: str) -> list[dict[str, object]]:
    """Metrics of a run, from the same SQL views served by the live sink."""
    rows = SinkClient(Settings.load()).metrics(run_id)
    if not rows:
        raise InputError(f"no stored results for run {run_id!r}")
    return rows


def _metric_rows(args: argparse.Namespace) -> list[dict[str, object]]:
    if args.run is not None:
        if args.results is not None:
            raise InputError("give a RESULTS file or --run RUN, not both")
        return score_run(args.run)
    if args.results is None:
        raise InputError("give a RESULTS file or --run RUN")
    return score_file(args.results, args.run_name)


def run(args: argparse.Namespace) -> int:
    rows = _metric_rows(args)
    if args.json:
        subset = [{key: row[key] for key in JSON_KEYS} for row in rows]
        sys.stdout.write(orjson.dumps(subset, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_metrics_table(rows))
    return 0
