"""A running PERG Stream pipeline for tests: real broker, workers as OS processes.

``Pipeline`` starts the scripted model double (tests/model_double.py) and the four workers
(``perg worker ...``) as separate processes, isolated from other tests by their own topic
prefix, DuckDB file and sink port. Readiness is polled (the double prints its URL, the sink
answers /health); nothing waits on a fixed sleep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from perg.local import WorkerGroup, free_port

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT.parent / "shared" / "perg"


def wait_until(check: Any, what: str, timeout_s: float = 120, poll_s: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy (a readiness check, not a sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@dataclass
class Pipeline:
    bootstrap: str
    workdir: Path
    prefix: str
    generators: int = 2
    metrics: bool = False  # each worker serves /metrics and /ready (workers.metrics_url)
    model_max_in_flight: int = 64  # the model workers' calls per endpoint and process
    kafka_security: dict[str, str] = field(default_factory=dict)  # PERG_KAFKA_* (client.env)
    env: dict[str, str] = field(init=False)
    workers: WorkerGroup = field(init=False)
    doubles: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)
    model_url: str = field(default="", init=False)

    def __post_init__(self) -> None:
        port = free_port()
        self.env = {
            **os.environ,
            "PERG_KAFKA": self.bootstrap,
            "PERG_TOPIC_PREFIX": self.prefix,
            "PERG_DB": str(self.workdir / "perg.duckdb"),
            "PERG_SINK_PORT": str(port),
            "PERG_SINK_URL": f"http://127.0.0.1:{port}",
            "PERG_DATA_DIR": str(DATA_DIR),
            "PERG_SESSION_TIMEOUT_S": "10",
            "PERG_SNAPSHOT_EVERY_S": "2",
            "PERG_MODEL_MAX_IN_FLIGHT": str(self.model_max_in_flight),
            **self.kafka_security,
        }
        self.workers = WorkerGroup(self.env, self.workdir / "logs", metrics=self.metrics)

    def start_double(self, *options: str) -> str:
        """Start a scripted model double (options as on its command line); return its URL."""
        with (self.workdir / "model-double.log").open("ab") as log:
            double = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "model_double.py"), "--port", "0",
                 "--answers", str(DATA_DIR / "pergdata.csv"), *options],
                stdout=subprocess.PIPE, stderr=log,
            )  # fmt: skip
        self.doubles.append(double)
        assert double.stdout is not None
        url = double.stdout.readline().decode().strip()
        if not url.startswith("http"):
            raise RuntimeError("the model double did not start; see model-double.log")
        return url

    def start(self) -> None:
        self.model_url = self.start_double()
        self.workers.start_all(generators=self.generators)
        self.wait_for_sink()

    def wait_for_sink(self) -> None:
        self.workers.wait_for_sink(self.env["PERG_SINK_URL"])

    def stop(self) -> None:
        self.workers.stop()
        for double in self.doubles:
            double.terminate()
            double.wait(timeout=30)

    # -- the CLI, as a user drives it -------------------------------------------------------

    def perg(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "perg", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def submit(self, *extra: str, model_url: str | None = None) -> str:
        proc = self.perg(
            "submit",
            "--model-url", model_url or self.model_url, "--model", "scripted-double",
            "--judge-url", self.model_url, "--judge-model", "scripted-double",
            *extra,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        run_id = proc.stdout.strip()
        assert run_id and "\n" not in run_id, proc.stdout
        return run_id

    def perg_background(self, *args: str) -> subprocess.Popen[str]:
        """``perg ARGS`` running alongside (e.g. a ``status --wait`` poller)."""
        return subprocess.Popen(
            [sys.executable, "-m", "perg", *args],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def http_get(self, url: str) -> Any:
        return urllib.request.urlopen(url, timeout=10)

    def status(self, run_id: str) -> dict[str, Any] | None:
        url = f"{self.env['PERG_SINK_URL']}/api/runs/{run_id}/status"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                status: dict[str, Any] = orjson.loads(response.read())
                return status
        except OSError:
            return None

    def sql(self, query: str) -> list[dict[str, Any]]:
        request = urllib.request.Request(
            self.env["PERG_SINK_URL"] + "/sql",
            data=orjson.dumps({"sql": query}),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = orjson.loads(response.read())
        return [dict(zip(answer["columns"], row, strict=True)) for row in answer["rows"]]


@contextmanager
def running_pipeline(
    bootstrap: str,
    workdir: Path,
    prefix: str,
    *,
    metrics: bool = False,
    model_max_in_flight: int = 64,
    kafka_security: dict[str, str] | None = None,
) -> Iterator[Pipeline]:
    pipeline = Pipeline(
        bootstrap,
        workdir,
        prefix,
        metrics=metrics,
        model_max_in_flight=model_max_in_flight,
        kafka_security=kafka_security or {},
    )
    with stopped_at_exit(pipeline):
        pipeline.start()
        yield pipeline


@contextmanager
def stopped_at_exit(pipeline: Pipeline) -> Iterator[Pipeline]:
    """Stops ``pipeline`` when the block exits; when it exits with an error, first prints the
    last lines of every worker's log (what the failure looked like from the services)."""
    try:
        yield pipeline
    except BaseException:
        for name in pipeline.workers.procs:
            print(f"--- {name} ---\n{pipeline.workers.log_tail(name)}", file=sys.stderr)
        raise
    finally:
        pipeline.stop()
