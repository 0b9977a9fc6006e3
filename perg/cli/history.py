"""``perg history NAME [--json]``: a lineage's runs in order (view lineage_history).

Exit codes: 0; 2 unknown or invalid lineage name; 3 the sink (or its file) cannot be reached.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from perg._text import text_table
from perg.cli.client import SinkClient
from perg.config import Settings
from perg.lineage import lineage_history

COLUMNS = ("#", "run", "version", "created", "state", "rows", "|Q*|", "BR", "AFR", "RER",
           "noise BR", "verdict", "accepted")  # fmt: skip


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "history",
        help="a lineage's runs in order, with metrics, verdicts and acceptances",
        description="A lineage's runs, oldest first: version, time, rows, |Q*|, BR/AFR/RER "
        "pooled over every setting and method with 95%% Wilson intervals, noise BR where "
        "measured, the latest gate verdict against its reference and whether it was accepted "
        "(the SQL view lineage_history). Exit codes: 0, 2 unknown lineage, 3 sink unreachable.",
    )
    parser.add_argument("lineage", metavar="NAME", help="lineage name (perg submit --lineage)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def _interval(row: dict[str, Any], metric: str) -> str:
    value = row[metric]
    if value is None:
        return "-"
    return f"{value:.1f} [{row[metric + '_lo']:.1f}, {row[metric + '_hi']:.1f}]"


def _text(rows: list[dict[str, Any]]) -> str:
    table = [COLUMNS]
    for r in rows:
        verdict = "-" if r["verdict"] is None else f"{r['verdict']} vs {r['reference_run_id']}"
        table.append((
            str(r["position"]), r["run_id"], r["version"] or "-", str(r["created_at"])[:19],
            r["state"], f"{r['results_stored']} results of {r['n_rows']} rows", str(r["n_qstar"]),
            _interval(r, "BR"), _interval(r, "AFR"), _interval(r, "RER"),
            "-" if r["noise_BR"] is None else f"{r['noise_BR']:.1f}",
            verdict, "yes" if r["accepted"] else "no",
        ))  # fmt: skip
    note = (
        "Metrics: percent, lower is better, pooled over every setting and method of the run "
        "(each outcome weighs equally; 95% Wilson intervals treat outcomes as independent)."
    )
    return text_table(table) + "\n" + note


def run(args: argparse.Namespace, settings: Settings) -> int:
    rows = lineage_history(SinkClient(settings), args.lineage)
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        print(_text(rows))
    return 0
