"""TEST HELPER, run as a process: a Worker over ``<prefix>.work`` whose handler appends each
message's value to a file. With ``--slow VALUE`` the message with that value never finishes
(it waits forever), reproducing faust-streaming issue #606: a slow head message with fast
followers must hold back the partition's commit.

    python tests/commit_probe.py --bootstrap HOST:PORT --prefix P --out FILE [--slow VALUE]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
from pathlib import Path

from perg.config import load_settings
from schemas.topics import WORK
from services._runtime import Message, Worker, WorkerOptions, run_worker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--slow", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    settings = dataclasses.replace(
        load_settings(), kafka=args.bootstrap, topic_prefix=args.prefix, partitions=1
    )
    worker = Worker("probe", settings, WorkerOptions(instance="probe-0"), (WORK,), in_flight=8)

    async def handle(message: Message) -> None:
        value = (message.value or b"").decode()
        if value == args.slow:
            await asyncio.Event().wait()  # never finishes
        with args.out.open("a") as out:
            out.write(f"{message.offset} {value}\n")

    worker.serve_messages(handle)
    run_worker(worker)


if __name__ == "__main__":
    main()
