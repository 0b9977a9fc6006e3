"""``perg demo``: a real evaluation on this machine, end to end, in one command.

Starts (or reuses) Kafka and the embedded model server from deploy/, starts the four services
as processes, submits a run over a stratified sample, shows live progress, prints the metrics
and leaves the results in DuckDB. Everything it started is stopped on completion or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from perg.client import Endpoint
from perg.config import Settings
from perg.kafka import ensure_topics
from perg.live.client import SinkClient
from perg.local import WorkerGroup, deploy_script, free_port
from perg.metrics import format_metrics_table
from perg.progress import follow
from perg.protocol import Method, Setting
from perg.runs import RunRequest, plan_run, publish_run
from schemas import Decoding, RunSpec, WorkItem

EMBEDDED_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    sample: int | None = 20  # stratified; None = every row
    seed: int = 0
    settings: tuple[Setting, ...] = ("relevant", "mixed", "irrelevant")
    methods: tuple[Method, ...] = ("zero_shot", "cot", "icl", "self_critic", "pref_aligner")
    protocol: str = "paper"
    max_tokens: int = 96
    model_url: str | None = None  # an already running OpenAI-compatible server instead
    model: str = EMBEDDED_MODEL


def _start_or_reuse(
    stack: ExitStack, env: dict[str, str], console: Console, script: str, probe: str, label: str
) -> str:
    """The address of a running server of ``deploy/<script>``, else start one (stopped on exit)."""
    running = deploy_script(script, probe, env=env, check=False)
    if running:
        console.print(f"{label} already running at {running}")
        return running
    with console.status(f"Starting {label}…"):
        address = deploy_script(script, "start", env=env)
    stack.callback(deploy_script, script, "stop", env=env)
    console.print(f"{label} started at {address}")
    return address


def run_demo(options: DemoOptions, console: Console) -> int:
    workdir = options.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("PERG_KAFKA_DIR", str(workdir / "kafka"))
    env.setdefault("PERG_LLAMA_DIR", str(workdir / "llama"))
    with ExitStack() as stack:
        with console.status("Fetching the Kafka broker jars (first time only)…"):
            deploy_script("kafka.sh", "fetch", env=env)
        bootstrap = _start_or_reuse(stack, env, console, "kafka.sh", "bootstrap", "Kafka")
        model_url = options.model_url
        if model_url is None:
            with console.status("Installing the embedded model server (first time: a build)…"):
                deploy_script("llama-server.sh", "install", env=env)
            label = f"the embedded model server ({EMBEDDED_MODEL}, CPU)"
            model_url = _start_or_reuse(stack, env, console, "llama-server.sh", "url", label)
        port = int(env.get("PERG_SINK_PORT") or free_port())
        env.update(
            PERG_KAFKA=bootstrap,
            PERG_DB=env.get("PERG_DB", str(workdir / "perg.duckdb")),
            PERG_SINK_PORT=str(port),
            PERG_SINK_URL=f"http://127.0.0.1:{port}",
            PERG_TOPIC_PREFIX=env.get("PERG_TOPIC_PREFIX", "perg-demo"),
        )
        os.environ.update(env)  # this process reads the same Settings as its workers
        settings = Settings.load()

        workers = WorkerGroup(env, workdir / "logs")
        stack.callback(workers.stop)
        with console.status("Starting generator, aligner, judge and sink…"):
            workers.start_all()
            try:
                workers.wait_for_sink(settings.sink_url)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}; the worker logs are in {workers.log_dir}") from exc

        endpoint = Endpoint(model_url, options.model, "llamacpp", max_in_flight=4)
        request = RunRequest(
            model=endpoint,
            judge=endpoint,
            protocol=options.protocol,
            settings=options.settings,
            methods=options.methods,
            sample=options.sample,
            seed=options.seed,
            decoding=Decoding(max_tokens_cap=options.max_tokens),
        )
        spec, work = plan_run(request, settings)
        asyncio.run(_publish(spec, work, settings))
        run_id = spec.context.run_id
        console.print(
            f"Run [bold]{run_id}[/]: {spec.selection}, {len(spec.settings)} settings x "
            f"{len(spec.methods)} methods = {spec.expected_results} results "
            f"(live: perg status {run_id} --follow, dashboard {settings.sink_url}/)"
        )
        client = SinkClient(settings)

        def fetch() -> dict[str, object] | None:
            found = client.statuses(run_id)
            return found[0] if found else None

        try:
            last = follow(fetch, run_id, console=console)
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted: stopping; the results stored so far are kept.")
            last = fetch()
        rows = client.metrics(run_id)
        if rows:
            print(format_metrics_table(rows))  # plain: a wide table must not be re-wrapped
        _print_where(console, settings, run_id, done=bool(last and last["done"]))
    return 0 if last and last["done"] else 1


async def _publish(spec: RunSpec, work: list[WorkItem], settings: Settings) -> None:
    await ensure_topics(settings)
    await publish_run(spec, work, settings)


def _print_where(console: Console, settings: Settings, run_id: str, *, done: bool) -> None:
    state = "complete" if done else "incomplete"
    console.print(
        f"\nRun {run_id} is {state}. Results: [bold]{settings.db}[/] (DuckDB; Parquet snapshots "
        f"in {settings.db.parent / 'snapshots'}).\nQuery them:\n"
        f'  PERG_DB={settings.db} perg sql "SELECT setting, method, BR, AFR, RER, PVR '
        f"FROM metrics_by_source WHERE run_id = '{run_id}' AND source = 'full'\"\n"
        f'  duckdb -readonly {settings.db} "FROM results LIMIT 5"'
    )
