"""docker-compose.yml as users run it, on a real Docker engine (marker ``compose``).

The default CPU stack is built and brought up with ``docker compose up -d`` (or Debian's
``docker-compose`` 1.29, whichever the machine has); the test waits on the health checks,
submits a run from the host, restarts the judge worker container mid-run, sees the run complete
with metrics in the dashboard API, and takes the stack down, which leaves the results volume.

deploy/offline-images.sh starts a Docker engine when none answers (root: Debian's docker.io) and,
since no image registry is reachable here, builds local stand-ins for the official base images
the files name (each line it prints says so). The stand-ins and the layer cache stay on the
machine, so a second run builds only what changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from perg.local import free_port

ROOT = Path(__file__).resolve().parent.parent
OFFLINE = ROOT / "deploy" / "offline-images.sh"
DATA_DIR = ROOT.parent / "shared" / "perg"
HEALTHY = ("kafka", "llama-model", "llama-judge", "sink")
ALIAS = "smollm2-135m-instruct"

pytestmark = [
    pytest.mark.compose,
    pytest.mark.skipif(
        shutil.which("docker") is None and os.geteuid() != 0,
        reason="no docker client, and not root to install Debian's docker.io",
    ),
]


def say(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """A line in the test's output even when it passes (what was built, how long it took)."""
    with capsys.disabled():
        print(f"[compose] {line}", file=sys.stderr, flush=True)


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    plugin = docker and subprocess.run([docker, "compose", "version"], capture_output=True)
    if docker and plugin and plugin.returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        pytest.skip("no `docker compose` nor docker-compose (.ci/install-system.sh installs it)")
    return [legacy]


def wait_until(what: str, check: Callable[[], bool], timeout_s: float, every_s: float = 2) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


class Stack:
    """One compose project of the test (its own name, host ports and volumes)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.project = f"perg-test-{uuid.uuid4().hex[:8]}"
        self.kafka_port, self.sink_port = free_port(), free_port()
        docker = subprocess.run([OFFLINE, "docker"], capture_output=True, text=True, check=True)
        self.docker = docker.stdout.strip()
        # compose 1.29 builds through the docker CLI (so BuildKit reads deploy/Dockerfile's
        # ignore file): the engine's own client, which needs no buildx plugin
        self.bin_dir = Path(f"/tmp/{self.project}-bin")
        self.bin_dir.mkdir()
        (self.bin_dir / "docker").symlink_to(self.docker)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PERG_", "COMPOSE_"))},
            "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
            "COMPOSE_DOCKER_CLI_BUILD": "1",
            "DOCKER_BUILDKIT": "1",
            "PERG_DATA_DIR": str(DATA_DIR),
            "PERG_KAFKA_HOST_PORT": str(self.kafka_port),
            "PERG_SINK_HOST_PORT": str(self.sink_port),
            "LLAMA_MODEL_HOST_PORT": str(free_port()),
            "LLAMA_JUDGE_HOST_PORT": str(free_port()),
        }
        self.base = [*compose_command(), "-p", self.project, "-f", str(ROOT / "docker-compose.yml")]

    def compose(self, *args: str, timeout_s: float = 1800) -> str:
        proc = subprocess.run(
            [*self.base, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
            timeout=timeout_s, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"compose {' '.join(args)}:\n{proc.stderr[-4000:]}"
        return proc.stdout

    def docker_out(self, *args: str) -> str:
        proc = subprocess.run([self.docker, *args], capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def health(self, service: str) -> str:
        container = self.compose("ps", "-q", service).strip()
        return self.docker_out("inspect", "-f", "{{.State.Health.Status}}", container)

    def logs(self) -> str:
        proc = subprocess.run([*self.base, "logs", "--tail", "30"], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, check=False)  # fmt: skip
        return proc.stdout[-6000:]

    def timed(self, what: str, *args: str) -> float:
        started = time.monotonic()
        self.compose(*args)
        took = time.monotonic() - started
        say(self.capsys, f"{what}: {took:.0f} s")
        return took


@pytest.fixture
def engine(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    started = time.monotonic()
    proc = subprocess.run([OFFLINE, "engine"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    we_started = proc.stdout.startswith("started")
    say(capsys, f"Docker engine: {proc.stdout.strip()} ({time.monotonic() - started:.0f} s)")
    bases = subprocess.run([OFFLINE, "bases"], capture_output=True, text=True, check=False)
    for line in bases.stderr.splitlines():
        say(capsys, line)
    assert bases.returncode == 0, bases.stderr
    say(capsys, f"base images ready: {time.monotonic() - started:.0f} s")
    yield
    if we_started:
        subprocess.run([OFFLINE, "engine-stop"], check=False)


@pytest.fixture
def stack(engine: None, capsys: pytest.CaptureFixture[str]) -> Iterator[Stack]:
    stack = Stack(capsys)
    yield stack
    # whatever happened: no container, network or volume of the test's project is left behind
    subprocess.run([*stack.base, "down", "--volumes", "--timeout", "10"], cwd=ROOT, env=stack.env,
                   capture_output=True, check=False)  # fmt: skip
    shutil.rmtree(stack.bin_dir, ignore_errors=True)


def submit(stack: Stack, rows: int) -> str:
    model = ["--model-url", "http://llama-model:8080/v1", "--model", ALIAS, "--model-backend",
             "llamacpp", "--judge-url", "http://llama-judge:8080/v1", "--judge-model", ALIAS,
             "--judge-backend", "llamacpp", "--constrain-judge"]  # fmt: skip
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "perg"), "submit", "--bootstrap",
         f"127.0.0.1:{stack.kafka_port}", *model, "--settings", "relevant",
         "--methods", "zero_shot,pref_aligner", "--sample", str(rows), "--max-tokens", "48",
         "--dataset", str(DATA_DIR / "pergdata.csv")],
        env={k: v for k, v in os.environ.items() if not k.startswith("PERG_")},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_compose_up_run_restart_down(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    stack.timed("docker compose build (perg-stream, perg-llama-server)", "build")
    for image in ("perg-stream:latest", "perg-llama-server:latest", "python:3.11-slim",
                  "debian:bookworm-slim", "apache/kafka:4.1.0"):  # fmt: skip
        size = int(stack.docker_out("image", "inspect", "-f", "{{.Size}}", image) or 0)
        say(capsys, f"image {image}: {size / 1e6:.0f} MB")
    stack.timed("docker compose up -d", "up", "-d")
    try:
        wait_until(
            f"healthy {', '.join(HEALTHY)}",
            lambda: all(stack.health(name) == "healthy" for name in HEALTHY),
            timeout_s=300,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.logs()}") from exc
    say(capsys, f"all health checks pass: {time.monotonic() - started:.0f} s since the build")
    api = f"http://127.0.0.1:{stack.sink_port}"

    run_id = submit(stack, rows=6)
    status_url = f"{api}/api/runs/{run_id}/status"

    def status() -> dict[str, Any]:
        try:
            found: dict[str, Any] = get_json(status_url)
        except OSError:  # 404 until the sink has seen the run
            return {}
        return found

    wait_until("a first stored result", lambda: status().get("results_stored", 0) > 0, 600)
    midway = status()
    assert not midway["done"], "the run finished before the restart; raise rows"
    stack.timed("docker compose restart judge (mid-run)", "restart", "judge")
    try:
        wait_until("the run to complete", lambda: bool(status().get("done")), 900, every_s=3)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nstatus {status()}\n{stack.logs()}") from exc
    final = status()
    assert final["results_stored"] == final["expected_results"] > midway["results_stored"]
    assert final["dead_letters"] == 0
    metrics = get_json(f"{api}/api/runs/{run_id}/metrics")
    assert {row["method"] for row in metrics} == {"zero_shot", "pref_aligner"}, metrics
    assert all(row["n_rows"] > 0 for row in metrics), metrics
    say(capsys, f"run {run_id}: {final['results_stored']} results, metrics served")

    stack.timed("docker compose down", "down", "--timeout", "20")
    assert stack.compose("ps", "-q").strip() == ""
    volume = f"{stack.project.replace('-', '')}_perg-results"
    named = stack.docker_out("volume", "ls", "-q", "--filter", f"name={stack.project}")
    assert volume in named.split() or f"{stack.project}_perg-results" in named.split(), named
    say(capsys, f"stack down, results volume kept; total {time.monotonic() - started:.0f} s")
