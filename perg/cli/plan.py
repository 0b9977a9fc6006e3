"""``perg plan (--lineage NAME | --reference RUN) --rows N [--mde D]``: the gate's power.

Per gated metric of each setting x method (pooled source 'full'), the smallest increase in
points that a candidate of N rows makes ``perg gate`` fail with the given power, from the
reference run's own rates and its share of rows in Q*; with ``--mde D``, the rows needed to
detect D. The model of the paired outcomes is stated in perg/power.py and in the output.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import orjson

from perg._text import text_table
from perg.cli.client import SinkClient
from perg.compare import TESTED_METRICS, Thresholds, check_alpha
from perg.config import Settings
from perg.errors import InputError
from perg.lineage import accepted_reference
from perg.power import detectable_increase, rows_needed

ASSUMPTION = (
    "Assumed: the candidate's extra failures fall on rows the reference passes; beyond them "
    "both runs disagree by chance by the reference's noise BR in each direction (BR, RER; 0 "
    "where not measured), which is also the gate's noise floor. Level: alpha / pooled tests "
    "(Holm's first step), so the gate's power is at least the stated one."
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "plan", help="what regression N rows can detect (the gate's power), or rows needed"
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--lineage", metavar="NAME", help="plan against its accepted run")
    which.add_argument("--reference", metavar="RUN", help="plan against this run")
    parser.add_argument("--rows", type=int, required=True, metavar="N",
                        help="rows the candidate will run")  # fmt: skip
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level")
    parser.add_argument("--power", type=float, default=0.8, help="power (default 0.8)")
    parser.add_argument("--mde", type=float, metavar="POINTS",
                        help="also the rows needed to detect this increase")  # fmt: skip
    parser.add_argument("--max-rer-increase", type=float, default=1.0, metavar="POINTS")
    parser.add_argument("--max-br-increase", type=float, metavar="POINTS")
    parser.add_argument("--max-afr-increase", type=float, metavar="POINTS")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def plan_rows(
    metrics: list[dict[str, Any]],
    thresholds: Thresholds,
    *,
    rows: int,
    alpha: float,
    power: float,
    mde: float | None,
) -> list[dict[str, Any]]:
    """One plan per gated metric of each pooled setting x method of the reference run."""
    pooled = [m for m in metrics if m["source"] == "full"]
    tests = sum(1 for m in pooled for metric in TESTED_METRICS if m.get(metric) is not None)
    level = alpha / max(1, tests)
    plans = []
    for cell in pooled:
        qstar_share = cell["n_qstar"] / cell["n_rows"] if cell["n_rows"] else 0.0
        shared = math.floor(rows * qstar_share)
        for metric in TESTED_METRICS:
            limit, rate = thresholds.of(metric), cell.get(metric)
            if limit is None or rate is None:
                continue
            floor = (cell.get("noise_BR") or 0.0) if metric in ("BR", "RER") else 0.0
            options = {"alpha": level, "power": power, "limit": limit, "floor": floor}
            detectable = detectable_increase(shared, ceiling=100 - rate, **options)
            needed = rows_needed(mde, **options) if mde is not None else None
            plans.append({
                "setting": cell["setting"], "method": cell["method"], "metric": metric,
                "reference": rate, "threshold": limit, "noise_floor": floor,
                "qstar_share": qstar_share, "shared_rows": shared, "level": level,
                "detectable_increase": detectable,
                "mde": mde,
                "rows_needed": None if needed is None else math.ceil(needed / qstar_share),
            })  # fmt: skip
    return plans


def run(args: argparse.Namespace, settings: Settings) -> int:
    alpha = check_alpha(args.alpha)
    power = check_alpha(args.power, "--power")
    if args.rows < 1:
        raise InputError(f"--rows: must be a positive number of rows, got {args.rows}")
    if args.mde is not None and not (math.isfinite(args.mde) and 0 < args.mde <= 100):
        raise InputError(f"--mde: must be a number of points in (0, 100], got {args.mde!r}")
    thresholds = Thresholds.checked(
        br=args.max_br_increase, afr=args.max_afr_increase, rer=args.max_rer_increase
    )
    client = SinkClient(settings)
    reference = args.reference or accepted_reference(client, args.lineage)
    metrics = client.metrics(reference)
    if not metrics:
        raise InputError(f"--reference: unknown run or no stored results: {reference!r}")
    plans = plan_rows(metrics, thresholds, rows=args.rows, alpha=alpha, power=power, mde=args.mde)
    if args.json:
        report = {"reference": reference, "rows": args.rows, "alpha": alpha, "power": power,
                  "assumption": ASSUMPTION, "plans": plans}  # fmt: skip
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 0
    header = ["setting", "method", "metric", "reference", "threshold", "noise floor",
              "shared Q* rows", "detectable +pts"]  # fmt: skip
    if args.mde is not None:
        header.append(f"rows for +{args.mde:g}")
    table = [header]
    for p in plans:
        found = p["detectable_increase"]
        line = [p["setting"], p["method"], p["metric"], f"{p['reference']:.1f}",
                f"{p['threshold']:g}", f"{p['noise_floor']:.1f}", str(p["shared_rows"]),
                "none" if found is None else f"{found:.2f}"]  # fmt: skip
        if args.mde is not None:
            line.append("never" if p["rows_needed"] is None else str(p["rows_needed"]))
        table.append(line)
    print(f"Reference {reference}: {args.rows} candidate rows, alpha {alpha:g}, power {power:g}.")
    print(ASSUMPTION)
    print(text_table(table))
    return 0
