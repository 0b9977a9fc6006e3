"""Where a gate's verdict goes besides stdout: a webhook (JSON POST) and GitHub Actions.

    post_verdict(url, payload)             # timeout, retries; raises AlertUnreachable
    github_outputs(markdown, failures)     # $GITHUB_STEP_SUMMARY and ::error lines

An unreachable webhook never changes the verdict or the exit code: the caller says so on
stderr. The webhook URL must be http(s) (checked before the gate runs: bad input, exit 2).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from perg.errors import InputError, UnavailableError

__all__ = [
    "AlertUnreachable",
    "check_webhook",
    "github_error",
    "github_summary",
    "github_summary_path",
    "post_verdict",
]

WEBHOOK_TIMEOUT_S = 10.0
WEBHOOK_ATTEMPTS = 3


class AlertUnreachable(UnavailableError):
    """The webhook did not accept the verdict after every attempt."""


def check_webhook(url: str) -> str:
    """InputError unless ``url`` is an http(s) URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"--webhook: not an http(s) URL: {url!r}")
    return url


def _worth_retrying(exc: BaseException) -> bool:
    """Unreachable, timed out or a server error; not a 4xx (the hook refused the body)."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500
    return isinstance(exc, OSError)  # URLError, timeouts, refused connections


@retry(
    retry=retry_if_exception(_worth_retrying),
    stop=stop_after_attempt(WEBHOOK_ATTEMPTS),
    wait=wait_exponential(multiplier=0.5, max=4),
    reraise=True,
)
def _post(url: str, body: bytes, timeout_s: float) -> int:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # scheme checked
        status: int = response.status
        return status


def post_verdict(url: str, payload: dict[str, Any], timeout_s: float = WEBHOOK_TIMEOUT_S) -> int:
    """POST ``payload`` as JSON; the HTTP status, or AlertUnreachable after the retries
    (a 4xx answer is not retried: the hook refused it)."""
    try:
        return _post(url, orjson.dumps(payload), timeout_s)
    except urllib.error.HTTPError as exc:
        raise AlertUnreachable(f"webhook {url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AlertUnreachable(
            f"webhook {url} unreachable after {WEBHOOK_ATTEMPTS} attempts: {reason}"
        ) from None


def github_summary_path() -> Path:
    """$GITHUB_STEP_SUMMARY, InputError when unset (--github outside GitHub Actions)."""
    found = os.environ.get("GITHUB_STEP_SUMMARY")
    if not found:
        raise InputError("--github: $GITHUB_STEP_SUMMARY is not set (not a GitHub Actions step)")
    return Path(found)


def github_summary(path: Path, markdown: str) -> None:
    """Append the Markdown report to the job summary."""
    with path.open("a", encoding="utf-8") as summary:
        summary.write(markdown + "\n")


def _escape(text: str) -> str:
    """A workflow command's message: %, CR and LF escaped (a name cannot start a command)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def github_error(title: str, message: str) -> str:
    """One ``::error`` workflow command line."""
    safe_title = _escape(title).replace(":", "%3A").replace(",", "%2C")
    return f"::error title={safe_title}::{_escape(message)}"
