"""llama.cpp's own HTTP server (the llama-server C++ code), from the PyPI wheel ``xllamacpp``:
the embedded CPU model server without a build. deploy/llama-server.sh runs this file with the
Python of the venv it installs the wheel into; the options are llama-server's own, by name.

    python deploy/llama-wheel-server.py --model GGUF --alias NAME --host 127.0.0.1 --port 8080 \
        --parallel 4 --ctx-size 16384 --threads 2 --threads-batch 2 [--jinja --no-webui]

As llama-server does, each option defaults to its LLAMA_ARG_* variable (LLAMA_ARG_MODEL,
LLAMA_ARG_ALIAS, LLAMA_ARG_HOST, LLAMA_ARG_PORT, LLAMA_ARG_N_PARALLEL, LLAMA_ARG_CTX_SIZE,
LLAMA_ARG_THREADS, LLAMA_ARG_THREADS_BATCH: the image's and docker-compose.yml's settings).
--jinja and --no-webui are accepted for llama-server's command line and always in effect.

The server runs on threads of its own (continuous batching over --parallel slots, the prompt
cache, the GGUF's Jinja chat template, no web UI); this process waits for SIGTERM or SIGINT and
then exits at once (the model holds nothing that needs saving).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import xllamacpp


def main() -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    version = f"version: xllamacpp {xllamacpp.__version__} (llama.cpp server, prebuilt wheel)"
    parser.add_argument("--version", action="version", version=version)
    parser.add_argument("--model", default=env("LLAMA_ARG_MODEL"), help="GGUF file")
    parser.add_argument("--alias", default=env("LLAMA_ARG_ALIAS"), help="model name clients send")
    parser.add_argument("--host", default=env("LLAMA_ARG_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("LLAMA_ARG_PORT", "8080")))
    parser.add_argument("--parallel", type=int, default=int(env("LLAMA_ARG_N_PARALLEL", "4")),
                        help="slots (sequences batched together)")  # fmt: skip
    parser.add_argument("--ctx-size", type=int, default=int(env("LLAMA_ARG_CTX_SIZE", "16384")),
                        help="context of all slots together")  # fmt: skip
    threads = int(env("LLAMA_ARG_THREADS", "2"))
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--threads-batch", type=int,
                        default=int(env("LLAMA_ARG_THREADS_BATCH", str(threads))))  # fmt: skip
    parser.add_argument("--jinja", action="store_true", help="(always on)")
    parser.add_argument("--no-webui", action="store_true", help="(always on)")
    args = parser.parse_args()
    if not args.model or not args.alias:
        parser.error("--model and --alias (or LLAMA_ARG_MODEL, LLAMA_ARG_ALIAS) are required")

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx_size
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads_batch
    params.use_jinja = True
    params.ui = False
    # the server's threads inherit this mask: the signals come to sigwait below, not to them
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    server = xllamacpp.Server(params)
    print(f"llama-wheel-server: listening on {server.listening_address}", file=sys.stderr)
    received = signal.sigwait(stop)
    print(f"llama-wheel-server: {signal.Signals(received).name}, exiting", file=sys.stderr)
    sys.stderr.flush()
    os._exit(0)  # the C++ server's threads are not joinable from Python


if __name__ == "__main__":
    sys.exit(main())
