"""``perg compare REFERENCE CANDIDATE`` and ``perg gate (REFERENCE | --lineage NAME) CANDIDATE``.

compare prints, per setting x method and per source, each metric of both runs, the difference
and a paired significance test; gate adds thresholds and exits 1 when the candidate is
significantly worse beyond one (0 otherwise, 2 on bad input). With ``--lineage`` the reference
is the lineage's latest accepted run, and the verdict is recorded (perg history);
``--accept-on-pass`` accepts the candidate when the gate passes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson

from perg._text import text_table
from perg.alerts import (
    AlertUnreachable,
    check_webhook,
    github_error,
    github_summary,
    github_summary_path,
    post_verdict,
)
from perg.cancel import cancel_run
from perg.cli.client import SinkClient
from perg.cli.plan import plan_rows
from perg.cli.status import positive_seconds
from perg.compare import (
    DETECT_POWER,
    TEST_NAME,
    Cell,
    Comparison,
    Thresholds,
    check_alpha,
    compare_runs,
)
from perg.config import Settings
from perg.errors import InputError
from perg.kafka import KafkaUnavailable
from perg.lineage import accept_run, accepted_reference, record_gate_decision, run_state
from perg.sequential_gate import DEFAULT_STALL_S, SequentialVerdict, follow_gate
from schemas import GateDecision

COLUMNS = ("setting", "method", "source", "metric", "reference", "candidate", "Δ",
           "Δ shared", "noise floor", "shared Q*", "worse", "better", "p adj", "")  # fmt: skip


# per metric in the webhook's JSON
PAYLOAD_FIELDS = ("setting", "method", "metric", "reference", "candidate", "delta",
                  "paired_delta", "n_shared", "p_value", "p_adjusted", "noise_floor",
                  "detectable", "gate_failed")  # fmt: skip


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    compare = subparsers.add_parser(
        "compare", help="compare two runs metric by metric, with paired significance tests"
    )
    _common(compare)
    compare.set_defaults(func=run_compare)
    gate = subparsers.add_parser(
        "gate",
        help="regression gate: exit 1 if the candidate run is significantly worse",
        description="Exit 1 when, for the pooled source 'full' of any setting x method, a gated "
        "metric of the candidate is higher than the reference run's by more than its threshold "
        "on the rows both runs share in Q*, and McNemar's test is significant; 0 otherwise; 2 on "
        "bad input (unknown run, different dataset or protocol).",
    )
    gate.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="REFERENCE CANDIDATE, or only CANDIDATE with --lineage",
    )
    _options(gate)
    gate.add_argument(
        "--lineage",
        metavar="NAME",
        help="gate against the latest accepted run of this lineage (perg accept)",
    )
    gate.add_argument(
        "--accept-on-pass",
        action="store_true",
        help="when the gate passes, record the candidate as the lineage's accepted run",
    )
    gate.add_argument(
        "--sequential",
        action="store_true",
        help="follow the candidate while it runs, decide as soon as the verdict is settled "
        "(always-valid e-processes), then cancel the rest of the run",
    )
    gate.add_argument("--max-rows", type=int, metavar="N",
                      help="with --sequential: decide by N candidate rows")  # fmt: skip
    stall = "with --sequential: give up (exit 3) when the candidate stores nothing new for S s "
    stall += f"(default {DEFAULT_STALL_S:g})"
    gate.add_argument("--stall-timeout", type=positive_seconds, default=DEFAULT_STALL_S,
                      metavar="S", help=stall)  # fmt: skip
    gate.add_argument("--power", type=float, default=0.8,
                      help="with --sequential: power of the early pass (default 0.8)")  # fmt: skip
    gate.add_argument("--mde", type=float, metavar="POINTS",
                      help="with --sequential: the increase to exclude before passing early "
                      "(default: what the fixed gate detects at max rows, perg plan)")  # fmt: skip
    gate.add_argument("--webhook", metavar="URL",
                      help="POST the verdict as JSON here (timeout, retries; unreachable: "
                      "said on stderr, the verdict stands)")  # fmt: skip
    gate.add_argument("--github", action="store_true",
                      help="GitHub Actions: the Markdown table to $GITHUB_STEP_SUMMARY, "
                      "::error lines for failed metrics")  # fmt: skip
    gate.add_argument(
        "--partial",
        action="store_true",
        help="gate an incomplete or cancelled candidate on the results stored so far "
        "(said in the verdict); refused otherwise",
    )
    gate.add_argument(
        "--max-rer-increase",
        type=float,
        default=1.0,
        metavar="POINTS",
        help="largest tolerated RER increase, in points (default 1.0)",
    )
    gate.add_argument(
        "--max-br-increase",
        type=float,
        metavar="POINTS",
        help="largest tolerated BR increase, in points (default: not gated)",
    )
    gate.add_argument(
        "--max-afr-increase",
        type=float,
        metavar="POINTS",
        help="largest tolerated AFR increase, in points (default: not gated)",
    )
    gate.set_defaults(func=run_gate)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "reference", help="run id of the reference run (the accepted one to compare against)"
    )
    parser.add_argument("candidate", help="run id of the candidate")
    _options(parser)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level")
    parser.add_argument("--correction", choices=("holm", "none"), default="holm",
                        help="multiple-test correction (default holm)")  # fmt: skip
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="compare runs over different datasets or protocols")  # fmt: skip
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="machine-readable output")
    output.add_argument("--markdown", action="store_true", help="Markdown (CI job summary)")


def run_compare(args: argparse.Namespace, settings: Settings) -> int:
    return _report(args, _comparison(args, SinkClient(settings), None))


def _gate_runs(args: argparse.Namespace, client: SinkClient) -> tuple[str, str]:
    """The reference and candidate of ``perg gate``: both given, or the lineage's latest
    accepted run and the candidate."""
    if args.lineage is None:
        if len(args.runs) != 2:
            raise InputError("give REFERENCE CANDIDATE, or --lineage NAME CANDIDATE")
        return args.runs[0], args.runs[1]
    if len(args.runs) != 1:
        raise InputError("with --lineage give only the CANDIDATE run")
    return accepted_reference(client, args.lineage), args.runs[0]


def run_gate(args: argparse.Namespace, settings: Settings) -> int:
    thresholds = Thresholds.checked(
        br=args.max_br_increase, afr=args.max_afr_increase, rer=args.max_rer_increase
    )
    check_alpha(args.alpha)
    webhook = check_webhook(args.webhook) if args.webhook else None
    summary = github_summary_path() if args.github else None
    client = SinkClient(settings)
    args.reference, args.candidate = _gate_runs(args, client)
    verdict = None
    if args.sequential:
        comparison, verdict = _sequential(args, client, thresholds)
    else:
        comparison = _comparison(args, client, thresholds)
    code = _report(args, comparison)
    passed = code == 0
    if verdict is not None and verdict.stop_early:
        _cancel_rest(settings, client, args.candidate, verdict)
    if summary is not None:
        _github(summary, comparison)
    if webhook is not None:
        try:
            post_verdict(webhook, verdict_payload(args, settings, client, comparison))
        except AlertUnreachable as exc:
            print(f"perg gate: the verdict was not posted (it stands): {exc}", file=sys.stderr)
    if args.lineage is not None:
        _record_decision(settings, args, passed)
    if passed and args.accept_on_pass:
        note = f"perg gate --accept-on-pass: passed against {args.reference}"
        acceptance, _ = accept_run(
            settings, client, args.candidate, note, allow_partial=args.sequential
        )
        print(f"perg gate: accepted {acceptance.run_id} in lineage {acceptance.lineage}",
              file=sys.stderr)  # fmt: skip
    return code


def verdict_payload(
    args: argparse.Namespace, settings: Settings, client: SinkClient, comparison: Comparison
) -> dict[str, object]:
    """The webhook's JSON: lineage, versions, per gated metric its values, deltas, p-values and
    detectable increase, and the dashboard link."""
    versions = {
        role: (run_state(client, run_id) or {}).get("version")
        for role, run_id in (("reference", args.reference), ("candidate", args.candidate))
    }
    return {
        "lineage": args.lineage,
        "reference": {"run_id": args.reference, "version": versions["reference"]},
        "candidate": {"run_id": args.candidate, "version": versions["candidate"]},
        "passed": not comparison.failures,
        "verdict": _verdict(comparison),
        "alpha": comparison.alpha,
        "warnings": comparison.warnings,
        "metrics": [
            {key: cell.as_dict()[key] for key in PAYLOAD_FIELDS}
            for cell in comparison.cells
            if cell.source == "full" and cell.p_value is not None
        ],
        "dashboard": settings.sink_url.rstrip("/") + "/",
    }


def _github(summary: Path, comparison: Comparison) -> None:
    """The Markdown table to the job summary; one ::error line per failed metric (stdout)."""
    github_summary(summary, markdown(comparison))
    for c in comparison.failures:
        print(github_error(
            f"PERG gate: {c.metric} regression",
            f"{c.setting}/{c.method} {c.metric} {_num(c.paired_delta, sign=True)} points on "
            f"{c.n_shared} shared rows (p adj {_p(c)})",
        ))  # fmt: skip


def _sequential(
    args: argparse.Namespace, client: SinkClient, thresholds: Thresholds
) -> tuple[Comparison, SequentialVerdict]:
    """Follow the candidate until the sequential gate decides."""
    if args.max_rows is not None and args.max_rows < 1:
        raise InputError(f"--max-rows: must be a positive number of rows, got {args.max_rows}")
    power = check_alpha(args.power, "--power")
    state = run_state(client, args.candidate) or run_state(client, args.reference) or {}
    rows = args.max_rows or state.get("n_rows")  # the candidate's, until it shows: the reference's
    planned = {
        (p["setting"], p["method"], p["metric"]): p["detectable_increase"]
        for p in plan_rows(client.metrics(args.reference), thresholds, rows=rows or 1,
                           alpha=args.alpha, power=power, mde=None)
    }  # fmt: skip

    def care(cell: Cell) -> float:
        found = planned.get((cell.setting, cell.method, cell.metric))
        return args.mde if args.mde is not None else 100.0 if found is None else found

    comparison, verdict = follow_gate(
        client, args.reference, args.candidate,
        thresholds=thresholds, alpha=args.alpha, power=power, care=care,
        max_rows=args.max_rows, correction=args.correction, allow_mismatch=args.allow_mismatch,
        stall_s=args.stall_timeout,
    )  # fmt: skip
    return comparison, verdict


def _cancel_rest(
    settings: Settings, client: SinkClient, candidate: str, verdict: SequentialVerdict
) -> None:
    """Cancel what remains of a run the sequential gate decided; Kafka away keeps the verdict."""
    reason = f"perg gate --sequential: {verdict.decision} at {verdict.rows} rows"
    try:
        stored = cancel_run(settings, client, candidate, reason)
    except KafkaUnavailable as exc:
        print(f"perg gate: the rest of the run was NOT cancelled: {exc}", file=sys.stderr)
        return
    if not stored:
        print("perg gate: the cancellation was published but not yet stored by the sink",
              file=sys.stderr)  # fmt: skip


def _record_decision(settings: Settings, args: argparse.Namespace, passed: bool) -> None:
    """Record the verdict for perg history; Kafka away changes neither verdict nor exit code."""
    decision = GateDecision(
        candidate_run_id=args.candidate,
        reference_run_id=args.reference,
        passed=passed,
        decided_at=datetime.now(UTC).isoformat(),
        lineage=args.lineage,
        summary="PASS" if passed else "FAIL",
    )
    try:
        record_gate_decision(settings, decision)
    except KafkaUnavailable as exc:
        print(f"perg gate: the verdict was not recorded for perg history: {exc}", file=sys.stderr)


def _comparison(
    args: argparse.Namespace, client: SinkClient, thresholds: Thresholds | None
) -> Comparison:
    return compare_runs(
        client,
        args.reference,
        args.candidate,
        alpha=args.alpha,
        thresholds=thresholds,
        correction=args.correction,
        allow_mismatch=args.allow_mismatch,
        allow_partial=thresholds is not None and args.partial,
    )


def _report(args: argparse.Namespace, comparison: Comparison) -> int:
    if args.json:
        print(orjson.dumps(comparison.as_dict(), option=orjson.OPT_INDENT_2).decode())
    elif args.markdown:
        print(markdown(comparison))
    else:
        print(text(comparison))
    return 1 if comparison.failures else 0


# -- rendering ------------------------------------------------------------------------------


def _num(value: float | None, sign: bool = False) -> str:
    return "-" if value is None else f"{value:+.1f}" if sign else f"{value:.1f}"


def _p(cell: Cell) -> str:
    return "-" if cell.p_adjusted is None else f"{cell.p_adjusted:.2g}"


def _mark(cell: Cell) -> str:
    if cell.gate_failed:
        return "FAIL"
    if cell.test_significant and cell.within_noise:
        return "noise"
    if not cell.significant:
        return ""
    return "worse" if (cell.paired_delta or 0) > 0 else "better"


def _row(cell: Cell) -> list[str]:
    tested = cell.p_value is not None
    return [
        cell.setting, cell.method, cell.source, cell.metric,
        _num(cell.reference), _num(cell.candidate), _num(cell.delta, sign=True),
        _num(cell.paired_delta, sign=True), _num(cell.noise_floor),
        str(cell.n_shared) if tested else "-",
        str(cell.worse) if tested else "-",
        str(cell.better) if tested else "-",
        _p(cell), _mark(cell),
    ]  # fmt: skip


def _run_line(role: str, run: dict[str, object]) -> str:
    return f"{role} {run['run_id']} (model {run['model']}, protocol {run['protocol']})"


def _method_lines(comparison: Comparison) -> list[str]:
    lines = [
        f"Test: {TEST_NAME}; alpha {comparison.alpha}, {comparison.correction} correction "
        "(over the pooled 'full' tests, and separately over the per-source tests).",
        "Δ = candidate - reference, each over its own Q*; Δ shared = the same over the rows in "
        "Q* of both runs (what the test and the gate use). Metrics are percent, lower is better.",
        "Noise floor = the larger noise BR of the two runs (the BR a preference-free re-run "
        "shows; runs with --repeat-baseline): a BR/RER change within it is not significant.",
    ]
    if comparison.thresholds:
        gated = [(m, comparison.thresholds.of(m)) for m in ("BR", "AFR", "RER")]
        limits = ", ".join(f"{m} +{v:g}" for m, v in gated if v is not None)
        lines.append(
            f"Gate (pooled 'full' only): fails if significant and Δ shared exceeds {limits} points."
        )
    lines += [f"Warning: {w}" for w in comparison.warnings]
    return lines


def _seen(comparison: Comparison) -> str:
    """What the shared rows could detect: the largest detectable increase over gated cells."""
    cells = [c for c in comparison.cells if c.source == "full" and c.n_shared]
    gated = [c for c in cells if comparison.thresholds and comparison.thresholds.of(c.metric)
             is not None]  # fmt: skip
    if not gated:
        return ""
    blind = [c for c in gated if c.detectable is None]
    worst = max(gated, key=lambda c: c.detectable or 0.0)
    if blind:
        c = blind[0]
        return (f"On {c.n_shared} shared rows {c.setting}/{c.method} {c.metric} could not detect "
                f"any increase with {DETECT_POWER:.0%} power.")  # fmt: skip
    return (f"Detectable on the shared rows ({DETECT_POWER:.0%} power): increases of "
            f"{worst.detectable:.2f} points and more ({worst.setting}/{worst.method} "
            f"{worst.metric}, {worst.n_shared} rows); smaller ones could not have been "
            "seen.")  # fmt: skip


def _verdict(comparison: Comparison) -> str:
    if comparison.thresholds is None:
        worse = [c for c in comparison.cells if c.source == "full" and _mark(c) == "worse"]
        return f"{len(worse)} pooled metric(s) significantly worse in the candidate."
    if not comparison.failures:
        return "PASS: no gated metric is significantly worse beyond its threshold. " + _seen(
            comparison
        )
    return "FAIL: " + "; ".join(
        f"{c.setting}/{c.method} {c.metric} {_num(c.paired_delta, sign=True)} points "
        f"on {c.n_shared} shared rows (p adj {_p(c)})"
        for c in comparison.failures
    )


def text(comparison: Comparison) -> str:
    lines = [
        _run_line("Reference:", comparison.reference),
        _run_line("Candidate:", comparison.candidate),
        *_method_lines(comparison),
        "",
    ]
    lines.append(text_table([COLUMNS, *(_row(c) for c in comparison.cells)]))
    return "\n".join([*lines, "", _verdict(comparison)])


def _md_table(cells: Sequence[Cell]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for cell in cells:
        row = _row(cell)
        row[-1] = f"**{row[-1]}**" if row[-1] else ""
        lines.append("| " + " | ".join(row) + " |")
    return lines


def markdown(comparison: Comparison) -> str:
    title = "PERG gate" if comparison.thresholds else "PERG comparison"
    if comparison.thresholds:
        title += ": ❌ FAIL" if comparison.failures else ": ✅ PASS"
    r, c = comparison.reference, comparison.candidate
    lines = [
        f"## {title}",
        "",
        f"Reference `{r['run_id']}` (model `{r['model']}`) vs candidate `{c['run_id']}` "
        f"(model `{c['model']}`), protocol `{c['protocol']}`.",
        "",
        f"**{_verdict(comparison)}**",
        "",
        *(f"- {line}" for line in _method_lines(comparison)),
        "",
        "### Pooled over all sources",
        "",
        *_md_table([cell for cell in comparison.cells if cell.source == "full"]),
        "",
        "<details><summary>Per source</summary>",
        "",
        *_md_table([cell for cell in comparison.cells if cell.source != "full"]),
        "",
        "</details>",
    ]
    return "\n".join(lines)
