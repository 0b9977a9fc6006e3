"""Where a ``perg demo`` run's time went, from what it left in its workdir.

    .venv/bin/python benchmarks/demo_profile.py [WORKDIR]   # default perg-results/demo

Run it after ``./perg-cli demo --workdir WORKDIR`` (e.g. once per server build, back to back:
``PERG_LLAMA_BUILD=portable``). It prints, from the files the run wrote:

- per call stage (the ``call:`` lines the model-calling workers log): calls, prompt and
  generated tokens, calls cut at max_tokens (``finish=length``), mean latency from submit
  (queueing behind the server's slots included);
- server side, per model server (llama-server's per-task timings in ``llama*/llama.log``):
  tasks, prompt tokens evaluated against prompt tokens in context (the rest came from the
  prompt cache), prompt and generation seconds summed over tasks, and the busy span from the
  first task to the last.

The machine may be shared: compare runs by ratios, back to back, with their load averages.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CALL = re.compile(
    r"service=\S+ run=\S+ call=(?P<stage>\S+) tokens_in=(?P<tin>\S+) tokens_out=(?P<tout>\S+) "
    r"latency=(?P<lat>[0-9.]+)s attempts=\d+ finish=(?P<finish>\S+)"
)
# llama-server's log: "<m>.<ss>.<ms>.<us> I slot print_timing: id  N | task T | ..."
STAMP = r"(?P<m>\d+)\.(?P<s>\d+)\.(?P<ms>\d+)\.(?P<us>\d+) "
TASK = STAMP + r"I slot +(?P<what>\S+?): id +\d+ \| task (?P<task>\d+) \| (?P<rest>.*)"
PROMPT = re.compile(r"prompt eval time = +(?P<ms>[0-9.]+) ms / +(?P<n>\d+) tokens")
EVAL = re.compile(r"^ *eval time = +(?P<ms>[0-9.]+) ms / +(?P<n>\d+) tokens")
RELEASE = re.compile(r"stop processing: n_tokens = (?P<n>\d+)")


@dataclass
class Stage:
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    at_limit: int = 0
    latency_s: float = 0.0


@dataclass
class Server:
    tasks: int = 0
    evaluated: int = 0  # prompt tokens the server computed
    in_context: int = 0  # prompt + generated tokens of each finished task
    generated: int = 0
    prompt_ms: float = 0.0
    eval_ms: float = 0.0
    stamps: list[float] = field(default_factory=list)


def read_calls(lines: Iterable[str]) -> dict[str, Stage]:
    stages: dict[str, Stage] = defaultdict(Stage)
    for line in lines:
        if (match := CALL.search(line)) is None:
            continue
        stage = stages[match["stage"]]
        stage.calls += 1
        stage.tokens_in += int(match["tin"]) if match["tin"].isdigit() else 0
        stage.tokens_out += int(match["tout"]) if match["tout"].isdigit() else 0
        stage.at_limit += match["finish"] == "length"
        stage.latency_s += float(match["lat"])
    return dict(stages)


def read_server(lines: Iterable[str]) -> Server:
    server = Server()
    for line in lines:
        if (match := re.match(TASK, line)) is None:
            continue
        stamp = int(match["m"]) * 60 + int(match["s"]) + int(match["ms"]) / 1e3
        rest = match["rest"]
        if match["what"] == "launch_slot_":
            server.tasks += 1
            server.stamps.append(stamp)
        elif (prompt := PROMPT.search(rest)) is not None:
            server.prompt_ms += float(prompt["ms"])
            server.evaluated += int(prompt["n"])
        elif (generated := EVAL.search(rest)) is not None:
            server.eval_ms += float(generated["ms"])
            server.generated += int(generated["n"])
        elif (release := RELEASE.search(rest)) is not None:
            server.in_context += int(release["n"])
            server.stamps.append(stamp)
    return server


def report(workdir: Path) -> list[str]:
    lines: list[str] = []
    logs = sorted((workdir / "logs").glob("*.log"))
    stages = read_calls(line for path in logs for line in path.open(errors="replace"))
    lines.append(f"{'stage':<16}{'calls':>7}{'tok in':>9}{'tok out':>9}{'at max':>8}{'latency':>9}")
    for name, s in sorted(stages.items()):
        mean_in, mean_out = s.tokens_in / s.calls, s.tokens_out / s.calls
        lines.append(
            f"{name:<16}{s.calls:>7}{mean_in:>9.0f}{mean_out:>9.1f}{s.at_limit:>8}"
            f"{s.latency_s / s.calls:>8.1f}s"
        )
    lines.append("(means per call; latency from submit, queueing included)")
    for server_log in sorted(workdir.glob("llama*/llama.log")):
        server = read_server(server_log.open(errors="replace"))
        name = server_log.parent.name
        prompted = server.in_context - server.generated
        span = max(server.stamps) - min(server.stamps) if server.stamps else 0.0
        cached = 1 - server.evaluated / prompted if prompted else 0.0
        lines.append(
            f"{name}: {server.tasks} tasks; prompt tokens {prompted} in context, "
            f"{server.evaluated} evaluated ({cached:.0%} from the prompt cache); "
            f"{server.generated} generated"
        )
        lines.append(
            f"{name}: busy {span:.0f} s from the first task to the last; summed over tasks "
            f"(overlapping in slots): prompt {server.prompt_ms / 1e3:.0f} s, "
            f"generation {server.eval_ms / 1e3:.0f} s; "
            f"{(server.evaluated + server.generated) / span if span else 0:.0f} tokens/s "
            "over the busy span"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", type=Path, nargs="?", default=Path("perg-results/demo"))
    args = parser.parse_args(argv)
    if not (args.workdir / "logs").is_dir():
        print(f"demo_profile: no demo logs in {args.workdir}/logs", file=sys.stderr)
        return 2
    print("\n".join(report(args.workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
