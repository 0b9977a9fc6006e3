"""The paper's tables and figures across runs (one run per model), from the metric views.

The tables follow the authors' ``print_metric_table`` (results_helper.py): one table per
setting x method, a row per model, the columns BR, RER, AFR, PVR (in that order) each for
CQA, MMLU, TQA and the pooled Full; the best (lowest) value of each column is bold and an
Average row closes the table. The figures: BR against AFR per model, each point labelled with
its RER (relevant setting, zero-shot, Full); PVR by model and setting (zero-shot, Full); and
Pref-Aligner's relative RER reduction against zero-shot by model and setting (Full).

Every number comes from the rows of ``metrics_by_source`` (perg/metrics.sql): this module only
arranges and draws them. Model names come from the store and are untrusted text: they are
escaped for Markdown and LaTeX and drawn without math parsing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from perg.protocol import METHODS, SETTINGS

__all__ = ["PaperReport", "RunMetrics", "build_report", "write_report"]

# (source in the metric views, column heading), in the authors' order.
SOURCE_COLUMNS = (
    ("tau/commonsense_qa", "CQA"),
    ("cais/mmlu", "MMLU"),
    ("truthfulqa/truthful_qa", "TQA"),
    ("full", "Full"),
)
TABLE_METRICS = ("BR", "RER", "AFR", "PVR")
SETTING_NAMES = {"relevant": "Relevant", "mixed": "Mixed", "irrelevant": "Irrelevant"}
METHOD_NAMES = {
    "zero_shot": "Zero-shot",
    "cot": "CoT",
    "icl": "ICL",
    "self_critic": "Self-critic",
    "pref_aligner": "Pref-Aligner",
}
MAX_LABEL = 40  # characters of a model name shown


@dataclass(frozen=True)
class RunMetrics:
    """One model's run: its label and its rows of ``metrics_by_source``."""

    label: str
    rows: Sequence[dict[str, Any]]

    def value(self, setting: str, method: str, source: str, metric: str) -> float | None:
        for row in self.rows:
            if (row["setting"], row["method"], row["source"]) == (setting, method, source):
                found = row.get(metric)
                return float(found) if isinstance(found, int | float) else None
        return None

    def has(self, setting: str, method: str) -> bool:
        return any((r["setting"], r["method"]) == (setting, method) for r in self.rows)


@dataclass(frozen=True)
class Table:
    """One setting x method: a row of values per model (None where a value is undefined)."""

    setting: str
    method: str
    labels: list[str]
    values: list[list[float | None]]  # [model][metric x source]

    @property
    def title(self) -> str:
        return f"{SETTING_NAMES.get(self.setting, self.setting)}, {METHOD_NAMES[self.method]}"

    def best(self, column: int) -> float | None:
        """The lowest value of ``column`` as shown (one decimal): ties are all best."""
        found = [v for row in self.values if (v := row[column]) is not None]
        return round(min(found), 1) if found else None

    def average(self, column: int) -> float | None:
        found = [v for row in self.values if (v := row[column]) is not None]
        return sum(found) / len(found) if found else None


@dataclass(frozen=True)
class PaperReport:
    runs: list[RunMetrics]
    tables: list[Table]


def build_report(runs: Sequence[RunMetrics]) -> PaperReport:
    """The tables of every setting x method that at least one run has."""
    tables = []
    for setting in SETTINGS:
        for method in METHODS:
            present = [run for run in runs if run.has(setting, method)]
            if not present:
                continue
            values = [
                [
                    run.value(setting, method, source, metric)
                    for metric in TABLE_METRICS
                    for source, _ in SOURCE_COLUMNS
                ]
                for run in present
            ]
            tables.append(Table(setting, method, [r.label for r in present], values))
    return PaperReport(list(runs), tables)


# -- text --------------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _is_best(table: Table, column: int, value: float | None) -> bool:
    return value is not None and round(value, 1) == table.best(column)


def markdown_label(text: str) -> str:
    """``text`` safe inside a Markdown table cell: one line, bounded, HTML characters as
    entities, Markdown's own characters escaped (a pipe cannot end the cell)."""
    flat = " ".join(_bounded(text).split())
    flat = flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char in "\\|*_`[]#!":
        flat = flat.replace(char, "\\" + char)
    return flat


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_label(text: str) -> str:
    """``text`` as LaTeX text: every special character escaped, one line, bounded."""
    flat = " ".join(_bounded(text).split())
    return "".join(_LATEX_ESCAPES.get(char, char) for char in flat)


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def _headings() -> list[str]:
    return [f"{metric} {name}" for metric in TABLE_METRICS for _, name in SOURCE_COLUMNS]


def format_markdown(report: PaperReport) -> str:
    """Every table as Markdown, percent with one decimal, the best of each column in bold."""
    parts = [
        "# PERG: the paper's tables",
        "",
        "Percent, lower is better; **bold**: the best (lowest) value of the column; "
        "- : not defined (AFR in the irrelevant setting) or no rows.",
    ]
    for table in report.tables:
        parts += ["", f"## {table.title}", ""]
        parts.append("| Model | " + " | ".join(_headings()) + " |")
        parts.append("| :--- |" + " ---: |" * len(_headings()))
        for label, row in zip(table.labels, table.values, strict=True):
            cells = [
                f"**{_number(v)}**" if _is_best(table, i, v) else _number(v)
                for i, v in enumerate(row)
            ]
            parts.append(f"| {markdown_label(label)} | " + " | ".join(cells) + " |")
        averages = [_number(table.average(i)) for i in range(len(_headings()))]
        parts.append("| *Average* | " + " | ".join(averages) + " |")
    return "\n".join(parts) + "\n"


def format_latex(report: PaperReport) -> str:
    """Every table as a LaTeX ``tabular`` (booktabs), in the authors' style: ``\\textbf`` for
    the best value of each column, a grey Average row (needs ``xcolor`` with ``table``)."""
    n = len(_headings())
    parts = ["% PERG: the paper's tables (percent, lower is better)"]
    for table in report.tables:
        parts += [
            "",
            f"% {latex_label(table.title)}",
            r"\begin{tabular}{l" + "r" * n + "}",
            r"\toprule",
            "Model & "
            + " & ".join(
                rf"\multicolumn{{{len(SOURCE_COLUMNS)}}}{{c}}{{{m}}}" for m in TABLE_METRICS
            )
            + r" \\",
            " & " + " & ".join(name for _ in TABLE_METRICS for _, name in SOURCE_COLUMNS) + r" \\",
            r"\midrule",
        ]
        for label, row in zip(table.labels, table.values, strict=True):
            cells = [_latex_cell(v, _is_best(table, i, v)) for i, v in enumerate(row)]
            parts.append(latex_label(label) + " & " + " & ".join(cells) + r" \\")
        averages = [_latex_cell(table.average(i), False) for i in range(n)]
        parts += [
            r"\rowcolor{gray!15}",
            r"\textbf{Average} & " + " & ".join(averages) + r" \\",
            r"\bottomrule",
            r"\end{tabular}",
        ]
    return "\n".join(parts) + "\n"


def _latex_cell(value: float | None, best: bool) -> str:
    if value is None:
        return "--"
    return rf"\textbf{{{value:.1f}}}\%" if best else rf"{value:.1f}\%"


# -- figures -----------------------------------------------------------------------------------


def _plain(text: str) -> str:
    """A label for matplotlib: bounded, one line (drawn with parse_math=False)."""
    return " ".join(_bounded(text).split())


def _or_zero(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else 0.0


def figure_br_afr(report: PaperReport) -> Figure | None:
    """BR against AFR per model (relevant setting, zero-shot, Full), labelled with RER."""
    points = []
    for run in report.runs:
        br, afr, rer = (run.value("relevant", "zero_shot", "full", m) for m in ("BR", "AFR", "RER"))
        if br is not None and afr is not None:
            points.append((run.label, br, afr, rer))
    if not points:
        return None
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    for label, br, afr, rer in points:
        ax.scatter([afr], [br], marker="x", s=80)
        ax.annotate(
            f"{_plain(label)} (RER {_number(rer)}%)",
            (afr, br),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize=9,
            parse_math=False,
        )
    ax.margins(x=0.3, y=0.1)  # room for the labels right of the points
    ax.set_xlabel("Alignment failure rate AFR (%)")
    ax.set_ylabel("Breakage rate BR (%)")
    ax.set_title("BR against AFR (relevant, zero-shot, Full); labels: RER")
    ax.grid(linestyle="--", alpha=0.5)
    return fig


def _grouped_bars(
    report: PaperReport, method: str, metric: str, xlabel: str, title: str
) -> Figure | None:
    """Horizontal bars, a group per model, a bar per setting: ``metric`` of ``method``, Full."""
    runs = [run for run in report.runs if any(run.has(s, method) for s in SETTINGS)]
    if not runs:
        return None
    settings = [s for s in SETTINGS if any(run.has(s, method) for run in runs)]
    fig = Figure(figsize=(8, 1.2 + 0.6 * len(runs) * max(1, len(settings)) / 2))
    ax: Axes = fig.subplots()
    height = 0.8 / len(settings)
    for i, setting in enumerate(settings):
        offsets = [y + (i - (len(settings) - 1) / 2) * height for y in range(len(runs))]
        values = [run.value(setting, method, "full", metric) for run in runs]
        ax.barh(
            offsets,
            [_or_zero(v) for v in values],
            height=height,
            label=SETTING_NAMES.get(setting, setting),
        )
    ax.set_yticks(range(len(runs)), [_plain(r.label) for r in runs], parse_math=False)
    ax.invert_yaxis()
    ax.axvline(0, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(loc="best", frameon=False)
    ax.grid(axis="x", linestyle="--", alpha=0.3)
    fig.set_layout_engine("constrained")
    return fig


def figure_pvr(report: PaperReport) -> Figure | None:
    return _grouped_bars(
        report,
        "zero_shot",
        "PVR",
        "Performance variation rate PVR (%)",
        "PVR by model and setting (zero-shot, Full)",
    )


def figure_aligner(report: PaperReport) -> Figure | None:
    return _grouped_bars(
        report,
        "pref_aligner",
        "RER_relative_reduction",
        "Relative RER reduction against zero-shot (%)",
        "Pref-Aligner's improvement by model and setting (Full)",
    )


FIGURES = {
    "br_afr.png": figure_br_afr,
    "pvr_by_model.png": figure_pvr,
    "pref_aligner_improvement.png": figure_aligner,
}


def write_report(report: PaperReport, out: Path) -> list[Path]:
    """Write the tables (Markdown, LaTeX) and the figures that have data into folder ``out``;
    the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        ("paper_tables.md", format_markdown(report)),
        ("paper_tables.tex", format_latex(report)),
    ):
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for name, draw in FIGURES.items():
        fig = draw(report)
        if fig is not None:
            path = out / name
            fig.savefig(path, dpi=150)
            written.append(path)
    return written
