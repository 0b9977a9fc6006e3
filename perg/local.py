"""A PERG Stream stack on this machine: Kafka and the model server from deploy/, and the four
services as OS processes. Used by ``perg demo`` and by the end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from perg.config import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"


def deploy_script(
    name: str,
    *args: str,
    env: Mapping[str, str],
    timeout_s: float = 1800,
    check: bool = True,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Run ``deploy/<name>`` and return the last line it printed (a URL or a bootstrap).

    A failing script raises, or with ``check=False`` gives "" (e.g. ``status`` of a stopped
    server). ``progress`` gets each line the script logs on stderr as it comes (what it is
    doing and roughly how long it takes)."""
    with subprocess.Popen(
        ["bash", str(DEPLOY / name), *args],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            stdout_reader = _ReadAll(proc.stdout)
            assert proc.stderr is not None
            stderr = []
            for line in proc.stderr:
                stderr.append(line)
                if progress is not None:
                    progress(line.rstrip())
            stdout = stdout_reader.text()
            proc.wait()
        finally:
            timer.cancel()
    if proc.returncode != 0:
        if not check:
            return ""
        raise RuntimeError(f"deploy/{name} {' '.join(args)} failed:\n{''.join(stderr)[-3000:]}")
    lines = stdout.strip().splitlines()
    return lines[-1] if lines else ""


class _ReadAll:
    """Reads a pipe to its end on a thread (stdout, while stderr is read line by line)."""

    def __init__(self, pipe: IO[str] | None) -> None:
        assert pipe is not None
        self._chunks: list[str] = []
        self._thread = threading.Thread(target=lambda: self._chunks.append(pipe.read()))
        self._thread.start()

    def text(self) -> str:
        self._thread.join()
        return "".join(self._chunks)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_http(
    url: str, *, timeout_s: float, alive: Mapping[str, subprocess.Popen[bytes]]
) -> None:
    """Poll ``url`` until it answers 2xx; fail early when a process it depends on exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            exited = [f"{n} exit {p.returncode}" for n, p in alive.items() if p.poll() is not None]
            if exited:
                raise RuntimeError(f"{', '.join(exited)} stopped before {url} answered") from None
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


class WorkerGroup:
    """The services as local processes, each ``perg worker SERVICE`` with its own log file.

    Each worker gets a stable instance name (``generator-0``...), so one restarted under the
    same name takes its partitions back at once (static group membership). With ``metrics``,
    each serves /metrics and /ready on a port of its own, ``metrics_url(name)``."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, *, metrics: bool = False) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_ports: dict[str, int] | None = {} if metrics else None
        log_dir.mkdir(parents=True, exist_ok=True)

    def metrics_url(self, name: str) -> str:
        """Where worker ``name`` serves /metrics and /ready (``metrics=True`` only)."""
        if self.metrics_ports is None:
            raise RuntimeError("this worker group serves no metrics")
        return f"http://127.0.0.1:{self.metrics_ports[name]}"

    def start(self, service: str, index: int = 0) -> str:
        name = f"{service}-{index}"
        env = self.env
        if self.metrics_ports is not None:  # a restarted worker keeps its port
            port = self.metrics_ports.setdefault(name, free_port())
            env = {**env, "PERG_METRICS_PORT": str(port)}
        with (self.log_dir / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "perg", "worker", service, "--instance", name],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return name

    def start_all(self, generators: int = 1) -> None:
        self.start("sink")
        for index in range(generators):
            self.start("generator", index)
        self.start("aligner")
        self.start("judge")

    def wait_for_sink(self, sink_url: str, timeout_s: float = 180) -> None:
        sinks = {n: p for n, p in self.procs.items() if n.startswith("sink")}
        wait_for_http(f"{sink_url}/health", timeout_s=timeout_s, alive=sinks)

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown, no offset commit."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM every worker (each finishes or gives back its work and commits), SIGKILL
        stragglers."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
