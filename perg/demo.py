"""``perg demo``: a real evaluation on this machine, end to end, in one command.

Starts (or reuses) Kafka and the embedded model server from deploy/, starts the four services
as processes, submits a run over a stratified sample, shows live progress, prints the metrics
and leaves the results in DuckDB. Everything it started is stopped on completion or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from perg.cli.client import SinkClient
from perg.client import Endpoint
from perg.config import Settings
from perg.demo_report import (
    METHOD_NAMES,
    JudgeParse,
    format_table,
    headline,
    judge_parse_line,
    judge_parse_sql,
    judge_warning,
    pooled,
    qstar_warning,
)
from perg.kafka import ensure_topics
from perg.local import WorkerGroup, deploy_script, free_port
from perg.progress import follow
from perg.protocol import Method, Setting
from perg.runs import DEFAULT_PROTOCOL, RunRequest, plan_run, publish_run
from perg.textsafe import printable
from schemas import RunSpec, WorkItem

EMBEDDED_MODEL = "smollm2-135m-instruct"
# The defaults finish in a few minutes on 2 CPU cores (README, Timings): the relevant setting,
# where the paper's point shows (a stated preference breaks answers; Pref-Aligner repairs),
# zero-shot against Pref-Aligner, on a stratified sample big enough for a non-empty Q*.
DEFAULT_ROWS = 30
DEFAULT_SETTINGS: tuple[Setting, ...] = ("relevant",)
DEFAULT_METHODS: tuple[Method, ...] = ("zero_shot", "pref_aligner")
DEFAULT_MAX_TOKENS = 48
# llama-server slots (deploy/llama-server.sh, PERG_LLAMA_SLOTS): calls in flight per endpoint
EMBEDDED_SLOTS = 4
CPU_DEADLINE_BASE_S = 120.0
# how long each step takes here (2 cores, warm; README Timings), said when it starts
KAFKA_START = "~10-20 s"
MODEL_START = "~5-10 s"
WORKERS_START = "~5-15 s"
EVALUATION_S_PER_RESULT = 2.75  # the default grid on the embedded Q8_0 model, warm (165 s for 60)


def evaluation_estimate(results: int) -> str:
    """About how long ``results`` results take on the embedded model here."""
    minutes = max(results * EVALUATION_S_PER_RESULT / 60, 1)
    return f"{results} results: ~{minutes:.0f} min on 2 cores, longer when the machine is busy"


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    sample: int | None = DEFAULT_ROWS  # stratified; None = every row
    seed: int = 0
    settings: tuple[Setting, ...] = DEFAULT_SETTINGS
    methods: tuple[Method, ...] = DEFAULT_METHODS
    protocol: str = DEFAULT_PROTOCOL
    max_tokens: int = DEFAULT_MAX_TOKENS
    model_url: str | None = None  # an already running OpenAI-compatible server instead
    model: str = EMBEDDED_MODEL
    constrain_judge: bool = True  # the judge's reply can only be <answer>N</answer>
    by_source: bool = False  # also print the per-source table
    judge_url: str | None = None  # a judge server of its own instead of the model under test
    judge_model: str | None = None
    rows: str | None = None  # the first N rows or ids and ranges (as perg submit --rows)


def _say(console: Console, line: str) -> None:
    """One plain line (no markup, no re-wrapping, no control characters), the same on a
    terminal and off one."""
    console.print(printable(line), markup=False, highlight=False, soft_wrap=True)


def _progress(console: Console) -> Callable[[str], None]:
    """Prints a deploy script's log lines as they come (what it installs, how long it takes)."""
    return lambda line: _say(console, line)


class Step:
    """A step of the demo that takes more than a few seconds: a line saying what it does and
    about how long that takes (measured on 2 cores, README Timings) when it starts, and one
    saying how it ended and how long it took."""

    def __init__(self, console: Console, doing: str, expected: str) -> None:
        self.console = console
        self.started = time.monotonic()
        _say(console, f"{doing} ({expected})...")

    def done(self, outcome: str) -> None:
        _say(self.console, f"{outcome} ({time.monotonic() - self.started:.0f} s)")


def _start_or_reuse(
    stack: ExitStack,
    env: dict[str, str],
    console: Console,
    script: str,
    probe: str,
    label: str,
    expected: str,
) -> str:
    """The address of a running server of ``deploy/<script>``, else start one (stopped on exit)."""
    running = deploy_script(script, probe, env=env, check=False)
    if running:
        _say(console, f"{label} already running at {running}")
        return running
    step = Step(console, f"Starting {label}", expected)
    address = deploy_script(script, "start", env=env, progress=_progress(console))
    stack.callback(deploy_script, script, "stop", env=env)
    step.done(f"{label[0].upper()}{label[1:]} started at {address}")
    return address


def _request(options: DemoOptions, model_url: str) -> RunRequest:
    endpoint = Endpoint(model_url, options.model, "llamacpp")
    judge = endpoint
    if options.judge_url is not None:
        judge = Endpoint(options.judge_url.rstrip("/"), options.judge_model or options.model)
    return RunRequest(
        model=endpoint,
        judge=judge,
        constrain_rating=options.constrain_judge,
        protocol=options.protocol,
        settings=options.settings,
        methods=options.methods,
        rows=options.rows,
        sample=None if options.rows is not None else options.sample,
        seed=options.seed,
        max_tokens_cap=options.max_tokens,  # the protocol's decoding profile, capped
    )


def check_options(options: DemoOptions, settings: Settings) -> None:
    """Plan the run once before anything starts: a bad protocol, sample or dataset is reported
    (exit 2) before minutes go into starting Kafka, the model server and the workers."""
    plan_run(_request(options, options.model_url or "http://127.0.0.1:1/v1"), settings)


def start_kafka(stack: ExitStack, env: dict[str, str], console: Console) -> str:
    """Kafka's bootstrap address: a broker already running in the workdir, else a new one."""
    # kafka.sh says when it fetches the jars (first time only, about a minute)
    deploy_script("kafka.sh", "fetch", env=env, progress=_progress(console))
    return _start_or_reuse(
        stack, env, console, "kafka.sh", "bootstrap", "Kafka", expected=KAFKA_START
    )


def start_model(stack: ExitStack, env: dict[str, str], console: Console) -> str:
    """The embedded model server's base URL: one already running, else a new one."""
    # llama-server.sh says what it installs and how long that takes (first time only)
    deploy_script("llama-server.sh", "install", env=env, progress=_progress(console))
    label = f"the embedded model server ({EMBEDDED_MODEL}, CPU)"
    return _start_or_reuse(
        stack, env, console, "llama-server.sh", "url", label, expected=MODEL_START
    )


def start_workers(
    stack: ExitStack, env: dict[str, str], console: Console, log_dir: Path, sink_url: str
) -> None:
    """The four services as processes (stopped on exit), once the sink answers."""
    workers = WorkerGroup(env, log_dir)
    stack.callback(workers.stop)
    step = Step(console, "Starting generator, aligner, judge and sink", WORKERS_START)
    workers.start_all()
    try:
        workers.wait_for_sink(sink_url)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{exc}; the worker logs are in {workers.log_dir}") from exc
    step.done(f"The services are running (logs in {log_dir})")


def demo_settings(settings: Settings, workdir: Path, bootstrap: str, port: int) -> Settings:
    """The demo's configuration: its broker and sink port; its results file and topic prefix
    unless configured."""
    configured = settings.configured
    # the workers' client: the embedded server's slots; a CPU server queues the three
    # services' calls behind them, so a first reply may take far longer than a GPU's,
    # until the client learns the server's real latency
    client = replace(
        settings.model_client,
        max_in_flight=settings.model_client.max_in_flight
        if "model_max_in_flight" in configured
        else EMBEDDED_SLOTS,
        deadline_base_s=settings.model_client.deadline_base_s
        if "model_deadline_base_s" in configured
        else CPU_DEADLINE_BASE_S,
    )
    return replace(
        settings,
        model_client=client,
        kafka=bootstrap,
        db=settings.db if "db" in configured else workdir / "perg.duckdb",
        sink_port=port,
        sink_url=f"http://127.0.0.1:{port}",
        topic_prefix=settings.topic_prefix if "topic_prefix" in configured else "perg-demo",
    )


def worker_env(settings: Settings) -> dict[str, str]:
    """The variables that give a worker process what :func:`demo_settings` changed: how the
    configuration crosses into the processes the demo starts."""
    return {
        "PERG_KAFKA": settings.kafka,
        "PERG_DB": str(settings.db),
        "PERG_SINK_PORT": str(settings.sink_port),
        "PERG_SINK_URL": settings.sink_url,
        "PERG_TOPIC_PREFIX": settings.topic_prefix,
        "PERG_MODEL_MAX_IN_FLIGHT": str(settings.model_client.max_in_flight),
        "PERG_MODEL_DEADLINE_BASE_S": str(settings.model_client.deadline_base_s),
    }


def run_demo(options: DemoOptions, console: Console, settings: Settings) -> int:
    check_options(options, settings)
    workdir = options.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("PERG_KAFKA_DIR", str(workdir / "kafka"))
    env.setdefault("PERG_LLAMA_DIR", str(workdir / "llama"))
    with ExitStack() as stack:
        # Kafka (jars, then the broker) starts while the model server installs and loads
        with ThreadPoolExecutor(max_workers=1) as pool:
            kafka = pool.submit(start_kafka, stack, env, console)
            model_url = options.model_url or start_model(stack, env, console)
            bootstrap = kafka.result()
        port = settings.sink_port if "sink_port" in settings.configured else free_port()
        settings = demo_settings(settings, workdir, bootstrap, port)
        env.update(worker_env(settings))  # the workers load the same Settings as this process

        start_workers(stack, env, console, workdir / "logs", settings.sink_url)

        request = _request(options, model_url)
        spec, work = plan_run(request, settings)
        asyncio.run(_publish(spec, work, settings))
        run_id = spec.context.run_id
        methods = ", ".join(METHOD_NAMES.get(m, m) for m in spec.methods)
        judge = "the same model" if options.judge_url is None else request.judge.base_url
        if options.constrain_judge:
            judge += ", its rating constrained to <answer>N</answer>"
        console.print(
            f"Run [bold]{run_id}[/]: {spec.selection}; settings {', '.join(spec.settings)}; "
            f"methods {methods}: {spec.expected_results} results. Judge: {judge}."
            f"\nLive while it runs: dashboard [bold]{settings.sink_url}/[/], "
            f"or perg status {run_id} --follow",
            soft_wrap=True,
        )
        client = SinkClient(settings)

        step = Step(console, "Evaluating", evaluation_estimate(spec.expected_results))
        try:
            last = follow(lambda: client.status(run_id), run_id, console=console)
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted: stopping; the results stored so far are kept.")
            last = client.status(run_id)
        done = bool(last and last["done"])
        step.done("Evaluation complete" if done else "Evaluation stopped before the end")
        _print_report(console, client, options, run_id)
        _print_where(console, settings, run_id, done=done)
    return 0 if last and last["done"] else 1


async def _publish(spec: RunSpec, work: list[WorkItem], settings: Settings) -> None:
    await ensure_topics(settings)
    await publish_run(spec, work, settings)


def _print_report(console: Console, client: SinkClient, options: DemoOptions, run_id: str) -> None:
    rows = client.metrics(run_id)
    table = pooled(rows)
    found = client.sql(judge_parse_sql(run_id))["rows"]
    asked, rated, lowest, highest = found[0] if found else (0, 0, None, None)
    judge = JudgeParse(asked or 0, rated or 0, lowest, highest)
    judged = judge.uninformative() is None
    console.print(
        "\n[bold]Pooled metrics[/] (%, lower is better; over Q*, the questions answered "
        "correctly without a preference)"
    )
    print(format_table(table, judged=judged))  # plain: a table must not be re-wrapped
    if options.by_source:
        console.print("\n[bold]By source[/]")
        print(format_table([r for r in rows if r not in table], key="source", judged=judged))
    if (warning := judge_warning(judge)) is not None:
        console.print(f"[yellow]{escape(warning)}")
    console.print(judge_parse_line(judge, constrained=options.constrain_judge))
    if (words := headline(table, judged=judged)) is not None:
        console.print(f"[bold]{escape(words)}[/]")
    if (warning := qstar_warning(table)) is not None:
        console.print(f"[yellow]Warning: {escape(warning)}")


def _print_where(console: Console, settings: Settings, run_id: str, *, done: bool) -> None:
    state = "complete" if done else "incomplete"
    db = settings.db
    console.print(
        f"\nRun {run_id} is {state}. Results: [bold]{db}[/] (DuckDB; Parquet snapshots in "
        f"{db.parent / 'snapshots'}). Next:\n"
        f"  PERG_DB={db} perg score --run {run_id}      # every metric, per source\n"
        f'  PERG_DB={db} perg sql "SELECT setting, method, row_id, answer, gold_option, '
        f"judge_rating FROM results WHERE run_id = '{run_id}'\"\n"
        f"  perg demo --by-source | --all (3 settings x 5 methods) | --sample N | --full"
        f"  # more detail, more data",
        soft_wrap=True,
    )
