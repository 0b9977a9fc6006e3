"""`perg report --paper`: the paper's tables and figures from the metric views (issue 19)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import duckdb
import pytest
from fixtures.live.runs import fails, make_spec, write_run

from perg.cli import main
from perg.metrics import compute_metrics, load_outcomes_file
from perg.paper_report import (
    FIGURES,
    SOURCE_COLUMNS,
    TABLE_METRICS,
    RunMetrics,
    build_report,
    format_latex,
    format_markdown,
)
from services.sink.store import ResultStore

RELEASED = Path(__file__).parent / "fixtures" / "released" / "outcomes_released.csv"
PNG = b"\x89PNG\r\n\x1a\n"


def released_runs() -> list[RunMetrics]:
    con = duckdb.connect()
    load_outcomes_file(con, RELEASED, followed_threshold=lambda: 3)
    rows = compute_metrics(con)
    runs = dict.fromkeys(str(r["run_id"]) for r in rows)
    return [RunMetrics(run, [r for r in rows if r["run_id"] == run]) for run in runs]


def markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """title -> the cells of each line of its table (header first)."""
    tables: dict[str, list[list[str]]] = {}
    title = ""
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:]
            tables[title] = []
        elif line.startswith("| ") and title:
            tables[title].append([c.strip() for c in line.strip("|").split(" | ")])
    return tables


def test_markdown_tables_hold_the_view_values_with_the_best_in_bold() -> None:
    runs = released_runs()
    tables = markdown_tables(format_markdown(build_report(runs)))
    assert list(tables)[:3] == ["Relevant, Zero-shot", "Relevant, CoT", "Relevant, Pref-Aligner"]
    assert len(tables) == 9
    columns = [(m, s) for m in TABLE_METRICS for s, _ in SOURCE_COLUMNS]
    for title, lines in tables.items():
        setting = {"Relevant": "relevant", "Mixed": "mixed", "Irrelevant": "irrelevant"}[
            title.split(",")[0]
        ]
        method = {"Zero-shot": "zero_shot", "CoT": "cot", "Pref-Aligner": "pref_aligner"}[
            title.split(", ")[1]
        ]
        header, body, average = lines[0], lines[2:-1], lines[-1]
        assert header[1:] == [f"{m} {n}" for m in TABLE_METRICS for _, n in SOURCE_COLUMNS]
        assert [line[0] for line in body] == [run.label for run in runs]
        for j, (metric, source) in enumerate(columns, start=1):
            values = [run.value(setting, method, source, metric) for run in runs]
            shown = [round(v, 1) for v in values if v is not None]
            for line, value in zip(body, values, strict=True):
                if value is None:
                    assert line[j] == "-"
                    continue
                best = round(value, 1) == min(shown)
                assert line[j] == (f"**{value:.1f}**" if best else f"{value:.1f}"), (title, j)
            mean = sum(v for v in values if v is not None) / len(shown) if shown else None
            assert average[j] == ("-" if mean is None else f"{mean:.1f}")


def test_latex_marks_the_best_and_escapes_names() -> None:
    runs = released_runs()
    hostile = RunMetrics("a&b $x$ 100% #1 _{~^}\\ line\nbreak", runs[1].rows)
    text = format_latex(build_report([runs[0], hostile]))
    escaped = r"a\&b \$x\$ 100\% \#1 \_\{\textasciitilde{}\textasciicircum{}\}\textbackslash{}"
    assert escaped + " line break &" in text
    assert text.count(r"\begin{tabular}") == 9 == text.count(r"\end{tabular}")
    rer = runs[0].value("relevant", "zero_shot", "full", "RER")
    other = hostile.value("relevant", "zero_shot", "full", "RER")
    assert rer is not None and other is not None
    first_table = text.split(r"\end{tabular}")[0]
    cell = rf"\textbf{{{rer:.1f}}}\%" if round(rer, 1) <= round(other, 1) else rf"{rer:.1f}\%"
    assert cell in first_table


def test_markdown_escapes_names() -> None:
    runs = released_runs()
    text = format_markdown(build_report([RunMetrics("x|<img src=y>*", runs[0].rows)]))
    assert r"| x\|&lt;img src=y&gt;\* |" in text
    assert "<img" not in text


@pytest.mark.parametrize("label", ["plain", "$\\frac{$", "a" * 500, "new\nline $x^$"])
def test_figures_draw_any_model_name(label: str) -> None:
    runs = released_runs()
    report = build_report([RunMetrics(label, runs[0].rows), runs[1]])
    for draw in FIGURES.values():
        fig = draw(report)
        assert fig is not None
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        assert buffer.getvalue().startswith(PNG)


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    path = tmp_path / "perg.duckdb"
    store = ResultStore(path)
    for run, share in (("m1", 20), ("m2", 35)):
        spec = make_spec(run, 30, settings=("relevant", "mixed", "irrelevant"),
                         methods=("zero_shot", "cot", "pref_aligner"))  # fmt: skip
        write_run(store, spec, base_wrong=fails(run + "b", 20, per_cell=False),
                  pref_wrong=fails(run, share), unfollowed=fails(run + "f", share))  # fmt: skip
    store.close()
    return path


def test_report_paper_from_the_store_file(
    store_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("PERG_DB", str(store_file))
    monkeypatch.setenv("PERG_SINK_URL", "http://127.0.0.1:9")  # nothing listens: read the file
    out = tmp_path / "report"
    assert main(["report", "--paper", "m1", "m2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    names = ["paper_tables.md", "paper_tables.tex", *FIGURES]
    assert printed == [str(out / name) for name in names]
    for name in FIGURES:
        assert (out / name).read_bytes().startswith(PNG)
    markdown = (out / "paper_tables.md").read_text(encoding="utf-8")
    assert "| scripted (m1) |" in markdown and "| scripted (m2) |" in markdown
    with duckdb.connect(str(store_file), read_only=True) as con:
        (rer,) = con.execute(
            "SELECT RER FROM metrics_by_source WHERE run_id = 'm2' AND setting = 'mixed' "
            "AND method = 'cot' AND source = 'full'"
        ).fetchone() or (None,)
    line = next(
        cells for cells in markdown_tables(markdown)["Mixed, CoT"] if cells[0] == "scripted (m2)"
    )
    assert re.sub(r"\*", "", line[1 + 4 + 3]) == f"{rer:.1f}"  # RER Full


def test_report_paper_bad_input(
    store_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("PERG_DB", str(store_file))
    monkeypatch.setenv("PERG_SINK_URL", "http://127.0.0.1:9")
    assert main(["report", "--paper", "m1", "absent", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "perg report: --paper: no stored results for run 'absent'"
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    assert main(["report", "--paper", "m1", "--out", str(blocker / "sub")]) == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith(f"perg report: --out: cannot write to {blocker / 'sub'}: ")
    )
    monkeypatch.setenv("PERG_DB", str(tmp_path / "absent.duckdb"))
    assert main(["report", "--paper", "m1", "--out", str(tmp_path / "r")]) == 3
    assert main(["report", "--out", str(tmp_path / "r")]) == 2  # a mode is required
    assert "give a RUN (with --html FILE or --markdown), or --paper RUN" in capsys.readouterr().err
    assert main(["report", "m1", "--paper", "m1"]) == 2
    assert "--paper RUN... takes its runs itself" in capsys.readouterr().err
