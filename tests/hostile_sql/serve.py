"""A sink-like API server in a process of its own, for attack tests: ``python serve.py DB``.

Fills the results file ``DB`` with a scripted run (if empty), serves :func:`create_app` over it
on a free loopback port like the sink does, and prints ``READY <port>`` once it accepts
connections; stops on SIGTERM or SIGINT, with handlers of its own like the workers' (a
process started from a background shell inherits SIGINT ignored). Limits come from the
environment (PERG_SQL_TIMEOUT_S, ...), as for the sink.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fixtures.live.runs import fails, make_spec, write_run

from perg.config import load_settings
from services.sink.live.api import check_bind, create_app
from services.sink.store import ResultStore, run_statuses


async def serve(db: Path) -> None:
    store = ResultStore(db)
    if not run_statuses(store.cursor()):
        write_run(
            store, make_spec("base", 30), pref_wrong=fails("a", 20), unfollowed=fails("f", 10)
        )
        store.con.execute("CHECKPOINT")
    settings = load_settings()
    check_bind("127.0.0.1", settings.sink_token)
    runner = web.AppRunner(create_app(store, token=settings.sink_token))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        store.close()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
