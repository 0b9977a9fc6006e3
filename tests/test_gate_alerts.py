"""perg gate --webhook and --github (issue 17 item 7), on the results files of test_compare."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from perg.alerts import github_error
from perg.cli import main

pytest_plugins = ["test_compare"]  # its results-file fixtures: base, worse, noise


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver on a free port: its URL and the bodies it received."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


def test_webhook_receives_the_verdict(
    offline: Path, hook: tuple[str, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, received = hook
    assert main(["gate", "base", "worse", "--webhook", url]) == 1
    (body,) = received
    assert body["passed"] is False and body["verdict"].startswith("FAIL")
    assert body["candidate"]["run_id"] == "worse" and body["reference"]["run_id"] == "base"
    rer = [m for m in body["metrics"] if m["metric"] == "RER"]
    assert rer and all(m["gate_failed"] and m["p_value"] < 0.05 and m["detectable"] for m in rer)
    assert body["dashboard"].startswith("http://127.0.0.1:9")
    capsys.readouterr()


def test_unreachable_webhook_keeps_the_verdict(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gate", "base", "worse", "--webhook", "http://127.0.0.1:9/hook"]) == 1
    assert main(["gate", "base", "noise", "--webhook", "http://127.0.0.1:9/hook"]) == 0
    err = capsys.readouterr().err
    assert err.count("the verdict was not posted (it stands)") == 2 and "3 attempts" in err


def test_github_summary_and_error_lines(
    offline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["gate", "base", "worse", "--github"]) == 1
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("::")]
    assert len(errors) == 2 and all(e.startswith("::error title=PERG gate%3A RER") for e in errors)
    assert summary.read_text().startswith("## PERG gate: ❌ FAIL")


def test_github_error_lines_are_escaped() -> None:
    line = github_error("a:b,c", "50% \n::error::injected")
    assert line == "::error title=a%3Ab%2Cc::50%25 %0A::error::injected"
    assert "\n" not in line


def test_alert_bad_input_exits_2(
    offline: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gate", "base", "worse", "--webhook", "file:///etc/passwd"]) == 2
    assert "--webhook: not an http(s) URL" in capsys.readouterr().err
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert main(["gate", "base", "worse", "--github"]) == 2
    assert "$GITHUB_STEP_SUMMARY is not set" in capsys.readouterr().err
