"""``perg report``: the HTML file is self-contained, escapes model text, lists the changed rows."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from fixtures.live.runs import fails, make_spec, verdicts

from perg.cli import main
from services.sink.store import ResultStore

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)> مرحبا e\u0301\u0301 | `x`"


@pytest.fixture
def stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "perg.duckdb"
    store = ResultStore(db)
    for run_id, broken in (("ref", 5), ("cand", 40)):
        spec = make_spec(run_id, 30, methods=("zero_shot",))
        store.save_run(spec)
        rows = verdicts(spec, range(30), pref_wrong=fails(run_id, broken))
        store.save_verdicts([dataclasses.replace(v, generation=dataclasses.replace(
            v.generation, response=HOSTILE)) for v in rows])  # fmt: skip
    store.close()
    monkeypatch.setenv("PERG_DB", str(db))
    monkeypatch.setenv("PERG_SINK_URL", "http://127.0.0.1:9")  # nothing listens: the file
    return db


def test_html_report_is_self_contained_and_escaped(stored: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert main(["report", "cand", "--against", "ref", "--html", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"(src|href)=\"?(https?:)?//", page)  # nothing fetched
    assert "default-src 'none'" in page and "<svg" in page
    assert "broke only in the candidate" in page


def test_markdown_and_bad_input(stored: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "cand", "--against", "ref", "--markdown"]) == 0
    text = capsys.readouterr().out
    assert "| BR |" in text or "BR" in text
    assert "&lt;script>" in text and "\\|" in text
    assert main(["report", "nope", "--markdown"]) == 2
    assert main(["report", "cand"]) == 2
    assert "give --html FILE" in capsys.readouterr().err
