"""What ``perg demo`` prints at the end: the pooled metrics in one compact table, a headline in
words, a warning when Q* is too small to mean anything, and the judge's parse rate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from perg._text import text_table

POOLED = "full"
METRICS = ("BR", "AFR", "RER")
# Below this many Q* questions a 95% Wilson interval is wider than ~40 points: numbers are
# anecdotes, not measurements.
MIN_QSTAR = 10
METHOD_NAMES = {
    "zero_shot": "zero-shot",
    "cot": "chain-of-thought",
    "icl": "in-context",
    "self_critic": "self-critic",
    "pref_aligner": "Pref-Aligner",
}


# Below this share of parseable ratings, AFR mostly counts the judge's failures to answer.
MIN_RATED_SHARE = 0.5


@dataclass(frozen=True)
class JudgeParse:
    """Judge replies that were asked for a rating, how many gave one, and the ratings given
    (the lowest and highest)."""

    asked: int
    rated: int
    lowest: int | None = None
    highest: int | None = None

    @property
    def rate(self) -> float | None:
        return 100 * self.rated / self.asked if self.asked else None

    def uninformative(self) -> str | None:
        """Why these ratings cannot inform AFR (and RER), in words; None when they can."""
        if not self.asked:
            return None
        if self.rated < MIN_RATED_SHARE * self.asked:
            return f"the judge gave a rating for only {self.rated} of {self.asked} replies"
        if self.lowest == self.highest:
            return f"the judge rated every one of the {self.rated} replies {self.lowest}"
        return None


# The judge is asked in every setting but irrelevant, for every stored response.
JUDGE_PARSE_SQL = (
    "SELECT count(*) FILTER (WHERE setting <> 'irrelevant' AND response IS NOT NULL) AS asked, "
    "count(*) FILTER (WHERE setting <> 'irrelevant' AND response IS NOT NULL "
    "AND judge_rating IS NOT NULL) AS rated, "
    "min(judge_rating) FILTER (WHERE setting <> 'irrelevant') AS lowest, "
    "max(judge_rating) FILTER (WHERE setting <> 'irrelevant') AS highest "
    "FROM results WHERE run_id = '{run_id}'"
)


def judge_parse_sql(run_id: str) -> str:
    return JUDGE_PARSE_SQL.format(run_id=run_id.replace("'", "''"))


def pooled(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The metric rows over all sources together (source 'full'), in the views' order."""
    return [row for row in rows if row.get("source") == POOLED]


def _interval(row: Mapping[str, Any], metric: str) -> str:
    value = row.get(metric)
    if value is None:
        return "-"
    return f"{value:.0f} [{row[f'{metric}_lo']:.0f}-{row[f'{metric}_hi']:.0f}]"


def format_table(
    rows: Sequence[Mapping[str, Any]], *, key: str | None = None, judged: bool = True
) -> str:
    """One line per setting x method (x ``key``, e.g. source): rows, |Q*|, BR/AFR/RER with
    their 95% intervals, PVR. Percentages, lower is better. ``judged=False`` (the judge's
    ratings cannot inform them): AFR and RER read ``n/a*``."""
    header = ["setting", "method", *([key] if key else []), "rows", "|Q*|"]
    header += [f"{m} % [95% CI]" for m in METRICS] + ["PVR %"]
    table = [header]
    for row in rows:
        method = METHOD_NAMES.get(str(row["method"]), str(row["method"]))
        cells = [str(row["setting"]), method, *([str(row[key])] if key else [])]
        cells += [str(row["n_rows"]), str(row["n_qstar"])]
        cells += [_interval(row, m) if judged or m == "BR" else "n/a*" for m in METRICS]
        cells.append("-" if row.get("PVR") is None else f"{row['PVR']:.0f}")
        table.append(cells)
    numeric = range(len(header) - len(METRICS) - 3, len(header))
    return text_table(table, right=numeric)


def _find(rows: Sequence[Mapping[str, Any]], setting: str, method: str) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["setting"] == setting and r["method"] == method), None)


def _overlap(a: Mapping[str, Any], b: Mapping[str, Any], metric: str) -> bool:
    return bool(a[f"{metric}_lo"] <= b[f"{metric}_hi"] and b[f"{metric}_lo"] <= a[f"{metric}_hi"])


def _change(zero: Mapping[str, Any], aligner: Mapping[str, Any], metric: str) -> str:
    overlap = "intervals overlap" if _overlap(zero, aligner, metric) else "intervals do not overlap"
    return f"{metric} from {zero[metric]:.0f}% to {aligner[metric]:.0f}% (95% {overlap})"


def headline(rows: Sequence[Mapping[str, Any]], *, judged: bool = True) -> str | None:
    """Pref-Aligner against zero-shot in the first setting that has both, in words (only BR
    when ``judged`` is False: the judge's ratings cannot inform RER)."""
    for setting in dict.fromkeys(str(r["setting"]) for r in rows):
        zero, aligner = _find(rows, setting, "zero_shot"), _find(rows, setting, "pref_aligner")
        if zero is None or aligner is None or zero["RER"] is None or aligner["RER"] is None:
            continue
        changes = _change(zero, aligner, "BR")
        if judged:
            changes += f" and {_change(zero, aligner, 'RER')}"
        return (
            f"In the {setting} setting, on the {aligner['n_qstar']} questions the model answers "
            f"correctly without a preference, Pref-Aligner (vs zero-shot) changed {changes}; "
            f"overlapping intervals mean this sample cannot tell the two apart."
        )
    return None


def qstar_warning(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """A warning when Q* (the questions every metric is computed over) is too small."""
    sizes = [int(r["n_qstar"]) for r in rows]
    if not sizes:
        return "No results were stored: nothing to report."
    smallest = min(sizes)
    if smallest == 0:
        return (
            "Q* is empty: the model answered none of the sampled questions correctly without a "
            "preference, so BR, AFR and RER are undefined. Use more rows (--sample N) or a "
            "stronger model (--model-url)."
        )
    if smallest < MIN_QSTAR:
        return (
            f"Q* has only {smallest} question(s): with so few, a 95% interval spans tens of "
            f"points and the numbers are indicative only. For measurements use at least a few "
            f"hundred rows (--sample N) on a stronger model (--model-url)."
        )
    return None


def judge_parse_line(parse: JudgeParse, *, constrained: bool) -> str:
    how = "constrained to <answer>N</answer>" if constrained else "free-form replies"
    if parse.rate is None:
        return f"Judge: no rating was asked for ({how})."
    return (
        f"Judge parse rate: {parse.rate:.0f}% ({parse.rated} of {parse.asked} replies gave a "
        f"1-5 rating; {how}; an unparseable reply counts as not followed)."
    )


def judge_warning(parse: JudgeParse) -> str | None:
    """What to make of AFR and RER when the judge's ratings cannot inform them."""
    why = parse.uninformative()
    if why is None:
        return None
    return (
        f"* AFR and RER are not measured here: {why}, so they say nothing about the model. "
        "BR (correctness) does not depend on the judge. For AFR and RER give a stronger judge: "
        "perg demo --judge-url URL --judge-model NAME (any OpenAI-compatible server)."
    )
