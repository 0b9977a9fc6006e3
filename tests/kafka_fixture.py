"""Session fixture ``kafka_broker``: the bootstrap string of a real Kafka broker.

Use from tests/conftest.py with ``from kafka_fixture import kafka_broker  # noqa: F401``
(tests/ is on sys.path, as for ``model_double``), or ``pytest_plugins = ["kafka_fixture"]``.

* ``PERG_KAFKA`` set -> that broker is reused as is; nothing is started or stopped.
* otherwise ``deploy/kafka.sh start`` runs with ``PERG_KAFKA_DIR`` pointing at a fresh
  temporary state dir (so a developer's own broker is never touched), and the broker is
  stopped and its data removed when the session ends. The jars are cached in
  ``$PERG_HOME/kafka/libs`` (the first run downloads them with Maven, about a minute).
* the broker is started lazily, only when a test asks for ``kafka_broker``.

``secure_kafka(brokers)``: a ``deploy/kafka.sh start --secure [--brokers N]`` broker or cluster
of its own (always a fresh temporary state dir, stopped and removed on exit), with its PLAINTEXT
bootstrap and the client settings of its SASL_SSL (client.env) and mutual TLS
(client-mtls.env) listeners.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "kafka.sh"


def kafka_script(
    state_dir: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run deploy/kafka.sh with its state in ``state_dir``; never raises on a non-zero exit."""
    env = dict(os.environ, PERG_KAFKA_DIR=str(state_dir))
    # a caller's fixed ports would collide with the developer's broker: always pick free ones
    env.pop("PERG_KAFKA_PORT", None)
    env.pop("PERG_KAFKA_CONTROLLER_PORT", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_broker(state_dir: Path) -> str:
    proc = kafka_script(state_dir, "start")
    if proc.returncode != 0:
        raise RuntimeError(f"deploy/kafka.sh start failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout.strip().splitlines()[-1]


@contextmanager
def broker_session() -> Iterator[str]:
    """``$PERG_KAFKA`` as is, else a broker in a fresh temp state dir, stopped on exit."""
    existing = os.environ.get("PERG_KAFKA")
    if existing:
        yield existing
        return
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no PERG_KAFKA and no java to run deploy/kafka.sh")
    state_dir = Path(tempfile.mkdtemp(prefix="perg-kafka-test-"))
    try:
        yield start_broker(state_dir)
    finally:
        kafka_script(state_dir, "stop", timeout=120)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    with broker_session() as bootstrap:
        yield bootstrap


@dataclass(frozen=True)
class SecureKafka:
    state_dir: Path
    plaintext: str  # bootstrap of the PLAINTEXT listener (loopback)
    sasl_ssl: dict[str, str]  # client.env: PERG_KAFKA and the PERG_KAFKA_* of SASL_SSL
    mtls: dict[str, str]  # client-mtls.env: the SSL listener requiring a client certificate


def client_env(path: Path) -> dict[str, str]:
    """The ``KEY=VALUE`` lines deploy/kafka.sh writes (client.env, client-mtls.env)."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


@contextmanager
def secure_kafka(brokers: int = 1) -> Iterator[SecureKafka]:
    if shutil.which("java") is None or shutil.which("openssl") is None:
        pytest.skip("needs java and openssl for deploy/kafka.sh start --secure")
    state_dir = Path(tempfile.mkdtemp(prefix="perg-kafka-secure-"))
    try:
        proc = kafka_script(state_dir, "start", "--secure", "--brokers", str(brokers))
        if proc.returncode != 0:
            raise RuntimeError(f"deploy/kafka.sh start --secure failed:\n{proc.stderr}")
        yield SecureKafka(
            state_dir=state_dir,
            plaintext=proc.stdout.strip().splitlines()[-1],
            sasl_ssl=client_env(state_dir / "client.env"),
            mtls=client_env(state_dir / "client-mtls.env"),
        )
    finally:
        kafka_script(state_dir, "stop", timeout=120)
        shutil.rmtree(state_dir, ignore_errors=True)
