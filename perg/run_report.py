"""A run's report to attach to a pull request or a ticket: ``perg report RUN [--against RUN]``.

:func:`build_report` reads everything through the sink's read-only API (or the results file,
as every command does): the run's status, its pooled metrics, and with a reference run the
comparison (:func:`perg.compare.compare_runs`) and, per tested cell, the discordant rows the
McNemar test counts (the first :data:`ROWS_PER_CELL` of each direction, with their total).

:func:`render_html` writes one self-contained page: inline CSS, an inline SVG chart drawn here
(no script at all; its Content-Security-Policy forbids any), every stored text through
``html.escape``. :func:`render_markdown` writes the same tables as text.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from perg.cli.client import SinkClient
from perg.compare import TEST_NAME, TESTED_METRICS, Cell, Comparison, compare_runs
from services.sink.live.rows import ChangedFilter, Page

ROWS_PER_CELL = 20
RESPONSE_CHARS = 300
METRICS = ("BR", "AFR", "RER")
DIRECTIONS = {"broke": "broke only in the candidate", "repaired": "repaired in the candidate"}


@dataclass
class ChangedCell:
    """The discordant rows of one tested cell and direction."""

    setting: str
    method: str
    metric: str
    direction: str
    total: int
    rows: list[dict[str, Any]]


@dataclass
class RunReport:
    run: dict[str, Any]
    metrics: list[dict[str, Any]]
    comparison: Comparison | None = None
    changed: list[ChangedCell] = field(default_factory=list)
    made_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def build_report(
    client: SinkClient, run_id: str, against: str | None, *, rows_per_cell: int = ROWS_PER_CELL
) -> RunReport:
    """The report of ``run_id`` (the candidate when ``against`` names a reference run)."""
    from perg.errors import InputError

    status = client.status(run_id)
    if status is None:
        raise InputError(f"unknown run {run_id!r} (perg status lists the runs)")
    pooled = [m for m in client.metrics(run_id) if m["source"] == "full"]
    report = RunReport(status, pooled)
    if against is None:
        return report
    report.comparison = compare_runs(client, against, run_id)
    for cell in report.comparison.cells:
        if cell.source != "full" or cell.metric not in TESTED_METRICS or cell.p_value is None:
            continue
        for direction, count in (("broke", cell.worse), ("repaired", cell.better)):
            if not count:
                continue
            page = client.changed(
                against,
                run_id,
                ChangedFilter(
                    cell.metric,
                    direction,
                    cell.setting,
                    cell.method,
                    None,
                    Page(1, rows_per_cell),
                ),
            )
            report.changed.append(
                ChangedCell(
                    cell.setting, cell.method, cell.metric, direction, page["total"], page["rows"]
                )
            )
    return report


# -- text ------------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ci(row: dict[str, Any], metric: str) -> str:
    value, lo, hi = row.get(metric), row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    if value is None:
        return "-"
    return f"{value:.1f} [{_num(lo)}, {_num(hi)}]" if lo is not None else f"{value:.1f}"


def _p(cell: Cell) -> str:
    return "-" if cell.p_adjusted is None else f"{cell.p_adjusted:.2g}"


def _verdict(comparison: Comparison) -> str:
    if comparison.thresholds is None:
        flagged = [c for c in comparison.cells if c.source == "full" and c.significant]
        return f"{len(flagged)} significant change(s) over the pooled rows"
    return "FAIL" if comparison.failures else "pass"


def _clip(text: str | None, chars: int = RESPONSE_CHARS) -> str:
    if text is None:
        return ""
    return text if len(text) <= chars else text[:chars] + "…"


def _md(text: object) -> str:
    """A table cell: no line breaks, pipes and markup characters escaped."""
    out = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    return " ".join(out.replace("`", "\\`").split())


def render_markdown(report: RunReport) -> str:
    run = report.run
    lines = [
        f"# PERG report: run {_md(run['run_id'])}",
        "",
        f"Model {_md(run.get('model'))}, protocol {_md(run.get('protocol'))}, "
        f"{run.get('results_stored')} / {run.get('expected_results')} results stored; "
        f"made {report.made_at}.",
        "",
        "| setting | method | rows | Q* | BR | AFR | RER | PVR |",
        "|---|---|---:|---:|---|---|---|---:|",
    ]
    for m in report.metrics:
        lines.append(
            f"| {m['setting']} | {m['method']} | {m['n_rows']} | {m['n_qstar']} | "
            f"{_ci(m, 'BR')} | {_ci(m, 'AFR')} | {_ci(m, 'RER')} | {_num(m['PVR'])} |"
        )
    c = report.comparison
    if c is not None:
        lines += [
            "",
            f"## Against {_md(c.reference['run_id'])}: {_verdict(c)}",
            "",
            f"{TEST_NAME}; alpha {c.alpha}, {c.correction} correction.",
            "",
            "| setting | method | metric | reference | candidate | Δ shared | shared Q* "
            "| broke | repaired | p adj |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for cell in c.cells:
            if cell.source == "full" and cell.metric in TESTED_METRICS:
                lines.append(
                    f"| {cell.setting} | {cell.method} | {cell.metric} | "
                    f"{_num(cell.reference)} | {_num(cell.candidate)} | "
                    f"{_num(cell.paired_delta)} | {cell.n_shared} | {cell.worse} | "
                    f"{cell.better} | {_p(cell)} |"
                )
        for changed in report.changed:
            lines += [
                "",
                f"### {changed.metric} {DIRECTIONS[changed.direction]}: "
                f"{changed.setting} / {changed.method} ({len(changed.rows)} of "
                f"{changed.total})",
                "",
                "| row | source | reference answer | candidate answer | candidate rating "
                "| candidate response |",
                "|---:|---|---|---|---:|---|",
            ]
            for row in changed.rows:
                ref, cand = row["reference"], row["candidate"]
                lines.append(
                    f"| {row['row_id']} | {row['source']} | {_md(ref.get('answer'))} | "
                    f"{_md(cand.get('answer'))} | {cand.get('judge_rating')} | "
                    f"{_md(_clip(cand.get('response')))} |"
                )
    return "\n".join(lines) + "\n"


# -- HTML ------------------------------------------------------------------------------------

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; color: #1d232b; margin: 1.5rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.2rem; }
th, td { border-bottom: 1px solid #d9dee4; padding: 0.2rem 0.5rem; text-align: left;
  vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { max-width: 40rem; white-space: pre-wrap; overflow-wrap: anywhere;
  unicode-bidi: isolate; font-family: ui-monospace, monospace; font-size: 12px; }
.muted { color: #66707c; }
.fail { color: #b13f48; font-weight: 600; }
svg text { font-size: 11px; fill: #1d232b; }
"""
# Bars: a colour AND a pattern AND a text label per metric, so no colour is needed to read them.
_PATTERNS = """
<defs>
<pattern id="p-BR" width="6" height="6" patternUnits="userSpaceOnUse">
  <rect width="6" height="6" fill="#3b6fb6"/></pattern>
<pattern id="p-AFR" width="6" height="6" patternUnits="userSpaceOnUse">
  <rect width="6" height="6" fill="#d08a2e"/><path d="M0 6 L6 0" stroke="#fff" stroke-width="1.5"/>
</pattern>
<pattern id="p-RER" width="6" height="6" patternUnits="userSpaceOnUse">
  <rect width="6" height="6" fill="#b13f48"/><circle cx="3" cy="3" r="1.3" fill="#fff"/>
</pattern>
</defs>
"""


def _e(value: object) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


def _chart(metrics: list[dict[str, Any]]) -> str:
    if not metrics:
        return '<p class="muted">No results stored yet.</p>'
    top = max([10.0, *(m.get(f"{k}_hi") or m.get(k) or 0.0 for m in metrics for k in METRICS)])
    scale = -(-top // 10) * 10
    left, height, bar, group = 40, 220, 22, 3 * 22 + 24
    width = left + len(metrics) * group + 10

    def y(value: float) -> float:
        return height - value / scale * (height - 20)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height + 50}" '
        f'width="{width}" role="img" aria-label="BR, AFR and RER per setting and method, '
        f'percent with 95% intervals">',
        _PATTERNS,
    ]
    for tick in range(0, int(scale) + 1, 10 if scale <= 50 else 20):
        parts.append(
            f'<line x1="{left}" x2="{width}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            f'stroke="#d9dee4"/><text x="{left - 4}" y="{y(tick) + 4:.1f}" '
            f'text-anchor="end">{tick}</text>'
        )
    for i, m in enumerate(metrics):
        x0 = left + i * group + 12
        for j, metric in enumerate(METRICS):
            value = m.get(metric)
            if value is None:
                continue
            x = x0 + j * bar
            parts.append(
                f'<rect x="{x}" y="{y(value):.1f}" width="{bar - 4}" '
                f'height="{height - y(value):.1f}" fill="url(#p-{metric})" '
                f'stroke="#1d232b" stroke-width="0.5"><title>{_e(m["setting"])} / '
                f"{_e(m['method'])} {metric} {value:.1f}</title></rect>"
                f'<text x="{x + (bar - 4) / 2}" y="{y(value) - 3:.1f}" '
                f'text-anchor="middle">{metric}</text>'
            )
            lo, hi = m.get(f"{metric}_lo"), m.get(f"{metric}_hi")
            if lo is not None and hi is not None:
                cx = x + (bar - 4) / 2
                parts.append(
                    f'<line x1="{cx}" x2="{cx}" y1="{y(lo):.1f}" y2="{y(hi):.1f}" '
                    'stroke="#1d232b"/>'
                )
        parts.append(
            f'<text x="{x0 + 1.5 * bar}" y="{height + 16}" text-anchor="middle">'
            f'{_e(m["method"])}</text><text x="{x0 + 1.5 * bar}" y="{height + 30}" '
            f'text-anchor="middle" fill="#66707c">{_e(m["setting"])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(head: list[str], rows: list[list[tuple[str, object]]]) -> str:
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="{k}">{_e(v)}</td>' for k, v in row) + "</tr>")
    return "".join([*out, "</tbody></table>"])


def render_html(report: RunReport) -> str:
    run = report.run
    body = [
        f"<h1>PERG report: run {_e(run['run_id'])}</h1>",
        f'<p class="muted">Model {_e(run.get("model"))}, protocol {_e(run.get("protocol"))},'
        f" {_e(run.get('results_stored'))} / {_e(run.get('expected_results'))} results "
        f"stored; made {_e(report.made_at)}. Percent, lower is better; brackets are 95% "
        "Wilson intervals over Q*.</p>",
        _chart(report.metrics),
        _table(
            ["setting", "method", "rows", "Q*", "BR", "AFR", "RER", "PVR"],
            [
                [
                    ("", m["setting"]),
                    ("", m["method"]),
                    ("num", m["n_rows"]),
                    ("num", m["n_qstar"]),
                    ("num", _ci(m, "BR")),
                    ("num", _ci(m, "AFR")),
                    ("num", _ci(m, "RER")),
                    ("num", _num(m["PVR"])),
                ]
                for m in report.metrics
            ],
        ),
    ]
    c = report.comparison
    if c is not None:
        verdict = _verdict(c)
        body += [
            f'<h2>Against {_e(c.reference["run_id"])}: <span class="'
            f'{"fail" if verdict == "FAIL" else ""}">{_e(verdict)}</span></h2>',
            f'<p class="muted">{_e(TEST_NAME)}; alpha {_e(c.alpha)}, {_e(c.correction)} '
            "correction. <em>broke</em> and <em>repaired</em> are the discordant pairs "
            "the test counts.</p>",
            _table(
                [
                    "setting",
                    "method",
                    "metric",
                    "reference",
                    "candidate",
                    "Δ shared",
                    "shared Q*",
                    "broke",
                    "repaired",
                    "p adj",
                ],
                [
                    [
                        ("", x.setting),
                        ("", x.method),
                        ("", x.metric),
                        ("num", _num(x.reference)),
                        ("num", _num(x.candidate)),
                        ("num", _num(x.paired_delta)),
                        ("num", x.n_shared),
                        ("num", x.worse),
                        ("num", x.better),
                        ("num", _p(x)),
                    ]
                    for x in c.cells
                    if x.source == "full" and x.metric in TESTED_METRICS
                ],
            ),
        ]
        for changed in report.changed:
            body += [
                f"<h3>{_e(changed.metric)} {_e(DIRECTIONS[changed.direction])}: "
                f"{_e(changed.setting)} / {_e(changed.method)} ({len(changed.rows)} of "
                f"{changed.total})</h3>",
                _table(
                    [
                        "row",
                        "source",
                        "reference answer",
                        "candidate answer",
                        "candidate rating",
                        "candidate response",
                    ],
                    [
                        [
                            ("num", r["row_id"]),
                            ("", r["source"]),
                            ("", r["reference"].get("answer")),
                            ("", r["candidate"].get("answer")),
                            ("num", r["candidate"].get("judge_rating")),
                            ("text", _clip(r["candidate"].get("response"))),
                        ]
                        for r in changed.rows
                    ],
                ),
            ]
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>PERG report {_e(run['run_id'])}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
