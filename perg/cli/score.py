"""``perg score``: BR / AFR / RER / PVR and the missing-answer metrics of a results file, with
the SQL of the live sink. Any answer value is scored (correct only when it equals the gold
letter); the values that are no option letter are counted and reported per column.

Exit codes: 0 scored; 2 bad input (every value of the file is checked first: the message names
the file, line and column of the first bad one) or no stored results to read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb
import orjson

from perg.cli.client import SinkClient
from perg.config import Settings
from perg.demo_report import JudgeParse
from perg.errors import InputError
from perg.metrics import (
    answer_values,
    compute_agreement,
    compute_metrics,
    format_agreement,
    format_answer_values,
    format_metrics_table,
    format_missing_answers_table,
    judge_parse,
    load_outcomes_file,
    nopref_disagreement,
)
from perg.protocol import load_protocol

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
    "n_noise_qstar",
    "noise_BR",
    "noise_BR_lo",
    "noise_BR_hi",
    "NoPrefInvalid",
    "PrefInvalid",
    "MCValidDrop",
    "PDDF",
    "RER_relative_reduction",
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
    parser.add_argument(
        "--protocol",
        default="paper",
        help="protocol the file's results were produced with: its judge threshold applies to "
        "rows without a followed_threshold column (default paper)",
    )
    parser.set_defaults(func=run)


# Metric rows, extractor agreement rows, and (files only) the answer columns' values.
Scores = tuple[list[dict[str, object]], list[dict[str, object]], list[dict[str, object]]]


def score_file(
    path: Path, run_name: str | None = None, protocol: str = "paper", data_dir: Path | None = None
) -> list[dict[str, object]]:
    """Metrics by source (and pooled 'full') of an offline results file.

    :class:`~perg.errors.InputError` names the file, line and column of the first bad value.
    """
    return _score_file(path, run_name, protocol, data_dir)[0]


def _score_file(path: Path, run_name: str | None, protocol: str, data_dir: Path | None) -> Scores:
    """Metrics by source (and pooled 'full'), extractor agreement and answer values of a
    results file; what the metrics cannot say is printed on stderr."""
    threshold = protocol_threshold(protocol, data_dir)  # a typo is refused before the file is read
    with duckdb.connect() as con:
        load_outcomes_file(con, path, run_name=run_name, followed_threshold=lambda: threshold)
        for warning in (judge_warning(path, judge_parse(con)), nopref_disagreement(con)):
            if warning is not None:
                print(f"perg score: {warning}", file=sys.stderr)
        return compute_metrics(con), compute_agreement(con), answer_values(con)


def protocol_threshold(name: str, data_dir: Path | None = None) -> int:
    """The judge threshold of protocol ``name`` (paper, strict or a file); a bad name is input."""
    try:
        return load_protocol(name, data_dir).judge_threshold
    except ValueError as exc:
        raise InputError(f"--protocol {name!r}: {exc} (use paper, strict or a file)") from exc


def judge_warning(path: Path, parse: JudgeParse) -> str | None:
    """What to make of AFR and RER when the file's judge ratings cannot inform them."""
    why = parse.uninformative()
    if why is None:
        return None
    return (
        f"{path}: judge_rating: AFR and RER are not measured here: {why}, so they say nothing "
        "about the model (an empty rating counts as not followed). BR does not depend on the "
        "judge: rate the replies with a judge that varies (perg submit --judge-url)."
    )


def score_run(run_id: str, settings: Settings) -> Scores:
    """Metrics and extractor agreement of a run, from the SQL views served by the live sink."""
    client = SinkClient(settings)
    rows = client.metrics(run_id)
    if not rows:
        raise InputError(f"no stored results for run {run_id!r}")
    return rows, client.agreement(run_id), []


def _scores(args: argparse.Namespace, settings: Settings) -> Scores:
    if args.run is not None:
        if args.results is not None:
            raise InputError("give a RESULTS file or --run RUN, not both")
        return score_run(args.run, settings)
    if args.results is None:
        raise InputError("give a RESULTS file or --run RUN")
    return _score_file(args.results, args.run_name, args.protocol, settings.data_dir)


def run(args: argparse.Namespace, settings: Settings) -> int:
    rows, agreement, answers = _scores(args, settings)
    notes = format_answer_values(answers)
    if args.json:
        subset = [{key: row[key] for key in JSON_KEYS} for row in rows]
        sys.stdout.write(orjson.dumps(subset, option=orjson.OPT_INDENT_2).decode() + "\n")
        for note in notes:  # stdout stays one JSON document
            print(note, file=sys.stderr)
    else:
        tables = [format_metrics_table(rows), format_missing_answers_table(rows)]
        print("\n\n".join([*tables, "\n".join([*format_agreement(agreement), *notes])]).rstrip())
    return 0
