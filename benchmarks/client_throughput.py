"""Requests/s of ModelClient against plain httpx and the openai SDK, on an instant local server.

    .venv/bin/python benchmarks/client_throughput.py [--requests 3000] [--rounds 3]

Starts the scripted model double (``tests/model_double.py --script ok``) as its own process, then
for 8 and 64 requests in flight times ``--requests`` chat calls per client, ``--rounds`` times in
interleaved order, and prints the median requests/s and the ratio to ModelClient. httpx and the
openai SDK are measured when importable and skipped otherwise (neither is a dependency). Every
client parses the JSON reply and reads the message text.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from perg.client import ClientTuning, Endpoint, ModelClient

MESSAGES = [{"role": "user", "content": "Which of the options best answers the question?"}]
Call = Callable[[], Awaitable[str]]


def _importable(module: str | None) -> bool:
    if module is None:
        return True
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


async def _ours(url: str, in_flight: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    client = ModelClient(Endpoint(url, "bench"), tuning=ClientTuning(max_in_flight=in_flight))

    async def call() -> str:
        return (await client.chat(MESSAGES, max_tokens=8)).text

    return call, client.aclose


async def _httpx(url: str, in_flight: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    httpx = importlib.import_module("httpx")
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    client = httpx.AsyncClient(limits=limits, timeout=300.0)
    body = {"model": "bench", "messages": MESSAGES, "max_tokens": 8, "temperature": 0.0}

    async def call() -> str:
        response = await client.post(url + "/chat/completions", json=body)
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"])

    return call, client.aclose


async def _openai(url: str, in_flight: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    openai = importlib.import_module("openai")
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)

    async def call() -> str:
        completion = await client.chat.completions.create(
            model="bench", messages=MESSAGES, max_tokens=8, temperature=0.0
        )
        return str(completion.choices[0].message.content)

    return call, client.close


OURS = "ModelClient (aiohttp)"
# name -> (module it needs beyond ours, factory)
CLIENTS = {
    OURS: (None, _ours),
    "httpx.AsyncClient": ("httpx", _httpx),
    "openai SDK": ("openai", _openai),
}


async def _rate(factory: Any, url: str, in_flight: int, requests: int) -> float:
    call, close = await factory(url, in_flight)
    try:
        await asyncio.gather(*(call() for _ in range(in_flight)))  # warm the connections
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await call()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return requests / (time.perf_counter() - started)
    finally:
        await close()


async def _start_server() -> tuple[asyncio.subprocess.Process, str]:
    double = Path(__file__).resolve().parent.parent / "tests" / "model_double.py"
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(double), "--port", "0", "--script", "ok", stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    return process, (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()


async def main(requests: int, rounds: int) -> None:
    available = {
        name: factory for name, (module, factory) in CLIENTS.items() if _importable(module)
    }
    for name in CLIENTS.keys() - available.keys():
        print(f"skipped {name}: not installed")
    process, url = await _start_server()
    try:
        rates: dict[tuple[str, int], list[float]] = {}
        for in_flight in (8, 64):
            for _ in range(rounds):
                for name, factory in available.items():
                    rate = await _rate(factory, url, in_flight, requests)
                    rates.setdefault((name, in_flight), []).append(rate)
    finally:
        process.terminate()
        await process.wait()
    print(f"\n{requests} requests x {rounds} rounds per cell, median req/s, server: model double")
    print(f"{'client':<24}{'in flight':>10}{'req/s':>10}{'vs ours':>10}")
    for in_flight in (8, 64):
        ours = statistics.median(rates[(OURS, in_flight)])
        for name in available:
            rate = statistics.median(rates[(name, in_flight)])
            print(f"{name:<24}{in_flight:>10}{rate:>10.0f}{rate / ours:>10.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
