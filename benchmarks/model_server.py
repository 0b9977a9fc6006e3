"""Tokens/s of the embedded model server builds, measured in one run and printed as ratios.

    .venv/bin/python benchmarks/model_server.py [--rows 6] [--concurrency 4]

Starts each server that is installed under $PERG_HOME (default ~/.cache/perg) in turn, on the
SmolLM2-135M-Instruct GGUF, and measures:

- prompt tok/s: distinct PERG prompts (in-context-example prompts of ``--rows`` rows, each made
  unique from its first token so no cache can help), one at a time, ``max_tokens=1``;
- decode tok/s: one long generation (128 tokens) from a short prompt;
- workload: the demo's calls for ``--rows`` rows (relevant-setting zero-shot and ICL answers,
  then a judge prompt, its reply constrained to <answer>N</answer> as the demo's is),
  ``--concurrency`` in flight, 48 tokens each: wall seconds.

Configurations (each skipped when its build is missing):
  python-avx2    llama-cpp-python's server, GGML_NATIVE=OFF (the former deploy/llama-server.sh,
                 venv $PERG_HOME/llama-venv): one sequence at a time
  server-portable-1  llama.cpp's llama-server, portable (AVX2) build, 1 slot, no prompt cache
  server-native-1    the same, native build (-march=native: AVX-512/VNNI/AMX here)
  server-native-N    native, --concurrency slots, prompt cache on
  server-portable-N  portable, the same slots and cache (what deploy/llama-server.sh and the
                     image ran by default before the wheel)
  server-wheel-N     llama.cpp's server from the PyPI wheel xllamacpp (no build; AVX2), the
                     same slots and cache: the default of deploy/llama-server.sh and the image

Ratios are to the first configuration measured. The machine may be shared: the load average
before and after is printed; compare only figures from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perg.client import response_format
from perg.dataset import load_dataset, stratified_sample
from perg.judging import RATING_SCHEMA
from perg.local import free_port
from perg.protocol import ChatMessage, load_protocol

LLAMA_CPP_PYTHON = "0.3.36"
XLLAMACPP = "2026.10.11549"  # as in deploy/llama-server.sh
GGUF_NAME = "SmolLM2-135M-Instruct.Q8_0.gguf"
ALIAS = "bench"


@dataclass(frozen=True)
class Config:
    name: str
    command: list[str]
    llama_server: bool  # accepts cache_prompt in the request body
    prompt_cache: bool


@dataclass(frozen=True)
class Figures:
    prompt_tps: float
    decode_tps: float
    workload_s: float


def perg_home() -> Path:
    return Path(os.environ.get("PERG_HOME", Path.home() / ".cache" / "perg"))


def configs(
    home: Path, slots: int, threads: int = 2, extra_ggufs: Sequence[Path] = ()
) -> tuple[list[Config], Path | None]:
    server_dir = {v: home / f"llama-server-{LLAMA_CPP_PYTHON}-{v}" for v in ("native", "portable")}
    server_dir["wheel"] = home / f"llama-server-{XLLAMACPP}-wheel"
    ggufs = [d / "models" / GGUF_NAME for d in server_dir.values()]
    gguf = next((path for path in ggufs if path.is_file()), None)
    found: list[Config] = []
    venv_python = home / "llama-venv" / "bin" / "python"
    if gguf is not None and venv_python.is_file():
        found.append(
            Config(
                "python-avx2",
                [str(venv_python), "-m", "llama_cpp.server", "--model", str(gguf),
                 "--model_alias", ALIAS, "--n_ctx", "4096", "--n_threads", "2",
                 "--n_threads_batch", "2", "--interrupt_requests", "False", "--host", "127.0.0.1",
                 "--port", "{port}"],
                llama_server=False,
                prompt_cache=False,
            )
        )  # fmt: skip
    runs: list[tuple[str, str, int, bool, Path | None]] = [
        (f"server-{variant}-{n}", variant, n, cache, gguf)
        for variant, n, cache in (("portable", 1, False), ("native", 1, False),
                                  ("native", slots, True), ("portable", slots, True),
                                  ("wheel", slots, True))
    ]  # fmt: skip
    runs += [(f"server-wheel-{slots}-{o.stem}", "wheel", slots, True, o) for o in extra_ggufs]
    for name, variant, n, cache, model in runs:
        binary = server_dir[variant] / "bin" / "llama-server"
        if model is None or not binary.is_file():
            continue
        found.append(
            Config(
                name,
                [str(binary), "--model", str(model), "--alias", ALIAS, "--host", "127.0.0.1",
                 "--port", "{port}", "--parallel", str(n), "--ctx-size", str(4096 * n),
                 "--threads", str(threads), "--threads-batch", "2", "--jinja", "--no-webui"],
                llama_server=True,
                prompt_cache=cache,
            )
        )  # fmt: skip
    return found, gguf


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        reply: dict[str, Any] = json.load(response)
        return reply


def chat(
    config: Config,
    url: str,
    messages: Sequence[ChatMessage],
    max_tokens: int,
    schema: Mapping[str, object] | None = None,
) -> int:
    """One call (constrained to ``schema`` as the demo's judge is); returns the prompt tokens
    the server reports."""
    body: dict[str, Any] = {
        "model": ALIAS,
        "messages": list(messages),
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    if schema is not None:
        body["response_format"] = response_format("llamacpp", schema)
    if config.llama_server:
        body["cache_prompt"] = config.prompt_cache
    usage = post(url, body).get("usage") or {}
    return int(usage.get("prompt_tokens", 0))


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


def measure(config: Config, rows: int, concurrency: int) -> Figures:
    protocol = load_protocol("paper")
    items = stratified_sample(load_dataset(), rows, seed=0)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    command = [part.replace("{port}", str(port)) for part in config.command]
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen(command, env=env, stdout=quiet, stderr=quiet, start_new_session=True)
    try:
        wait_ready(url, proc)
        chat(config, url, [{"role": "user", "content": "Hi"}], 1)  # warm-up

        prompt_tokens, started = 0, time.perf_counter()
        for n, item in enumerate(items):
            messages = protocol.answer_messages(item, "relevant", "icl")
            unique = [{"role": m["role"], "content": f"[{n}] {m['content']}"} for m in messages]
            prompt_tokens += chat(config, url, unique, 1)  # type: ignore[arg-type]
        prompt_tps = prompt_tokens / (time.perf_counter() - started)

        count = [{"role": "user", "content": "Count from 1 to 200, separated by spaces."}]
        started = time.perf_counter()
        body = {"model": ALIAS, "messages": count, "max_tokens": 128, "temperature": 0.0}
        usage = post(url, body).get("usage") or {}
        decode_tps = int(usage.get("completion_tokens", 0)) / (time.perf_counter() - started)

        calls: list[tuple[list[ChatMessage], Mapping[str, object] | None]] = []
        for item in items:
            calls.append((protocol.answer_messages(item, "relevant", "zero_shot"), None))
            calls.append((protocol.answer_messages(item, "relevant", "icl"), None))
            answer = f"The answer is {item.letters[0]}."
            calls.append((protocol.judge_messages(item, answer, answer), RATING_SCHEMA))
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda call: chat(config, url, call[0], 48, call[1]), calls))
        workload_s = time.perf_counter() - started
        return Figures(prompt_tps, decode_tps, workload_s)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=6, help="PERG rows per measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight (and slots)")
    parser.add_argument("--only", help="comma-separated configuration names")
    parser.add_argument("--threads", type=int, default=2, help="decode threads (--threads)")
    parser.add_argument(
        "--gguf", type=Path, action="append", default=[], help="another GGUF for the wheel server"
    )
    args = parser.parse_args(argv)
    found, gguf = configs(perg_home(), args.concurrency, args.threads, args.gguf)
    if args.only:
        found = [c for c in found if c.name in args.only.split(",")]
    if not found:
        print(f"no server build found under {perg_home()} (run deploy/llama-server.sh install)")
        return 2
    print(f"GGUF {gguf}; {args.rows} rows, {args.concurrency} in flight, {args.threads} threads")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    results: list[tuple[str, Figures]] = []
    for config in found:
        figures = measure(config, args.rows, args.concurrency)
        results.append((config.name, figures))
        print(
            f"  measured {config.name}: {figures.prompt_tps:.0f} prompt tok/s, "
            f"{figures.decode_tps:.0f} decode tok/s, workload {figures.workload_s:.1f} s",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}\n")
    base = results[0][1]
    header = f"{'configuration':<20}{'prompt tok/s':>14}{'decode tok/s':>14}{'workload s':>12}"
    print(header + f"{'prompt x':>10}{'decode x':>10}{'workload x':>12}")
    for name, f in results:
        print(
            f"{name:<20}{f.prompt_tps:>14.0f}{f.decode_tps:>14.0f}{f.workload_s:>12.1f}"
            f"{f.prompt_tps / base.prompt_tps:>10.2f}{f.decode_tps / base.decode_tps:>10.2f}"
            f"{base.workload_s / f.workload_s:>12.2f}"
        )
    print(f"(x = ratio to {results[0][0]}; workload x = how many times faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
