"""docker-compose.yml, checked offline with `docker-compose config` (Debian's compose 1.29).

No Docker engine is needed: `config` only parses, validates and interpolates the file.
.ci/install-system.sh installs the binary; without it these tests skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml (dev extra) parses the compose output")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(
    COMPOSE is None,
    reason="docker-compose binary not found (install it with .ci/install-system.sh)",
)

WORKERS = ("generator", "aligner", "judge", "sink")
GPU = ("tgi-model", "tgi-judge")
CPU = ("llama-model", "llama-judge")


def compose_config(
    *args: str, env: dict[str, str] | None = None, env_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    # a clean environment: no PERG_*/COMPOSE_* of the developer, no .env of the checkout
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PERG_", "COMPOSE_"))}
    for name in ("HF_TOKEN", "MODEL_ID", "JUDGE_MODEL_ID", "KAFKA_HEAP_OPTS"):
        base.pop(name, None)
    base.update(env or {})
    cmd = [str(COMPOSE), "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml")]
    if env_file is None:  # compose 1.29 wants a regular file; an empty one = no .env
        env_file = Path(tempfile.gettempdir()) / "perg-test-compose-empty.env"
        env_file.write_text("")
    cmd += ["--env-file", str(env_file), "config", *args]
    return subprocess.run(cmd, cwd=ROOT, env=base, capture_output=True, text=True, check=False)


def load(**env: str) -> dict[str, Any]:
    proc = compose_config(env=env)
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = yaml.safe_load(proc.stdout)
    return config


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = config["services"]
    return result


def test_all_services_present(services: dict[str, Any]) -> None:
    assert set(services) == {"kafka", *GPU, *CPU, *WORKERS}


def test_profiles(services: dict[str, Any]) -> None:
    for name in GPU:
        assert services[name]["profiles"] == ["gpu"], name
    # always on: the CPU model servers make the default stack useful without a GPU
    for name in ("kafka", *CPU, *WORKERS):
        assert "profiles" not in services[name], name


def test_profile_listing() -> None:
    proc = compose_config("--profiles")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["gpu"]


def test_kafka(services: dict[str, Any], config: dict[str, Any]) -> None:
    kafka = services["kafka"]
    version = re.search(r"^KAFKA_VERSION=(\S+)", (ROOT / "deploy/kafka.sh").read_text(), re.M)
    assert version is not None
    pom = (ROOT / "deploy/kafka/pom.xml").read_text()
    assert f"<kafka.version>{version[1]}</kafka.version>" in pom
    assert kafka["image"] == f"apache/kafka:{version[1]}"  # same broker as deploy/kafka.sh

    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "HOST://127.0.0.1:19092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert str(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == "1"
    assert str(env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == "1"
    assert str(env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"]) == "0"
    assert str(env["KAFKA_NUM_PARTITIONS"]) == "6"
    assert kafka["ports"] == ["127.0.0.1:19092:19092/tcp"]
    assert kafka["volumes"] == ["kafka-data:/var/lib/kafka/data:rw"]
    check = " ".join(kafka["healthcheck"]["test"])
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in check
    assert "--bootstrap-server kafka:9092" in check


def test_tgi(services: dict[str, Any]) -> None:
    for name, var, port in (("tgi-model", "MODEL_ID", 8081), ("tgi-judge", "JUDGE_MODEL_ID", 8082)):
        svc = services[name]
        assert svc["image"].startswith("ghcr.io/huggingface/text-generation-inference:3.")
        assert svc["command"][:2] == ["--model-id", "Qwen/Qwen2.5-7B-Instruct"], name
        device = svc["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert svc["shm_size"] == "1gb"
        assert "hf-cache:/data:rw" in svc["volumes"]
        assert "HF_TOKEN" in svc["environment"]
        assert svc["ports"] == [f"127.0.0.1:{port}:80/tcp"]
        assert svc["healthcheck"]["test"][-1] == "http://localhost:80/health"
        assert "curl" in svc["healthcheck"]["test"]
        # the model ids come from .env
        assert load(**{var: "org/other-model"})["services"][name]["command"][1] == "org/other-model"


def test_llama(services: dict[str, Any]) -> None:
    for name, port in (("llama-model", 8091), ("llama-judge", 8092)):
        svc = services[name]
        assert svc["image"] == "perg-llama-server:latest"
        # our image: llama-server and the GGUF inside, nothing to download or mount
        assert svc["build"]["target"] == "llama-server"
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert "volumes" not in svc
        env = svc["environment"]
        assert str(env["LLAMA_ARG_N_PARALLEL"]) == "4"
        assert str(env["LLAMA_ARG_CTX_SIZE"]) == "16384"
        assert svc["ports"] == [f"127.0.0.1:{port}:8080/tcp"]
        assert svc["healthcheck"]["test"][-1] == "http://localhost:8080/health"


def _entrypoint_argv(service: dict[str, Any], hostname: str) -> list[str]:
    """The arguments ``perg`` gets when the service's entrypoint runs its command in a
    container named ``hostname`` (a stand-in ``perg`` on PATH prints them)."""
    with tempfile.TemporaryDirectory() as bin_dir:
        fake = Path(bin_dir) / "perg"
        fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
        fake.chmod(0o755)
        # `config` prints "$$" escaped; the container gets "$"
        entrypoint = [part.replace("$$", "$") for part in service["entrypoint"]]
        proc = subprocess.run(
            [*entrypoint, *service["command"]],
            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOSTNAME": hostname},
            capture_output=True,
            text=True,
            check=True,
        )
    return proc.stdout.splitlines()


def test_workers(services: dict[str, Any]) -> None:
    # as compose prints it: made absolute, not resolved (../shared may be a symbolic link)
    data = Path(os.path.normpath(ROOT / ".." / "shared" / "perg"))
    for name in WORKERS:
        svc = services[name]
        assert svc["command"] == ["worker", name]
        assert _entrypoint_argv(svc, hostname=f"{name}-1") == [
            "worker", name, "--instance", f"{name}-1"
        ]  # fmt: skip
        assert svc["image"] == "perg-stream:latest"
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert Path(svc["build"]["context"]) == ROOT
        env = svc["environment"]
        assert env["PERG_KAFKA"] == ("127.0.0.1:19092" if name == "sink" else "kafka:9092")
        assert env["PERG_DATA_DIR"] == "/data/perg"
        assert f"{data}:/data/perg:ro" in svc["volumes"]
        # only Kafka: the model servers are chosen per run, so both stacks work
        assert svc["depends_on"] == {"kafka": {"condition": "service_healthy"}}, name
    for name in ("generator", "aligner", "judge"):
        assert "ports" not in services[name]
        assert "PERG_DB" not in services[name]["environment"]


def test_sink(services: dict[str, Any]) -> None:
    sink = services["sink"]
    # on the host's loopback only: no token needed, nothing off the host reaches it
    assert sink["network_mode"] == "host"
    assert "ports" not in sink
    env = sink["environment"]
    assert env["PERG_DB"] == "/results/perg.duckdb"
    assert env["PERG_SINK_BIND"] == "127.0.0.1"
    assert str(env["PERG_SINK_PORT"]) == "8765"
    assert env["PERG_SINK_TOKEN"] == ""
    assert "perg-results:/results:rw" in sink["volumes"]
    assert "http://127.0.0.1:8765/health" in " ".join(sink["healthcheck"]["test"])


def test_volumes(config: dict[str, Any]) -> None:
    assert set(config["volumes"]) == {"kafka-data", "hf-cache", "perg-results"}


def test_no_env_file_needed_and_token_passes_through() -> None:
    assert compose_config().returncode == 0  # `docker compose up` without .env
    sink = load(PERG_SINK_BIND="0.0.0.0", PERG_SINK_TOKEN="s3cret")["services"]["sink"]
    assert sink["environment"]["PERG_SINK_BIND"] == "0.0.0.0"
    assert sink["environment"]["PERG_SINK_TOKEN"] == "s3cret"


def test_overrides_from_env(tmp_path: Path) -> None:
    services = load(
        PERG_DATA_DIR=str(tmp_path),
        PERG_KAFKA_HOST_PORT="29092",
        PERG_SINK_HOST_PORT="9876",
        LLAMA_N_PARALLEL="2",
    )["services"]
    assert f"{tmp_path}:/data/perg:ro" in services["generator"]["volumes"]
    assert services["kafka"]["ports"] == ["127.0.0.1:29092:19092/tcp"]
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "HOST://127.0.0.1:29092" in advertised
    assert str(services["sink"]["environment"]["PERG_SINK_PORT"]) == "9876"
    assert services["sink"]["environment"]["PERG_KAFKA"] == "127.0.0.1:29092"
    assert "http://127.0.0.1:9876/health" in " ".join(services["sink"]["healthcheck"]["test"])
    assert str(services["llama-judge"]["environment"]["LLAMA_ARG_N_PARALLEL"]) == "2"


def test_env_example_matches_defaults(config: dict[str, Any]) -> None:
    """.env.example documents the defaults: using it changes nothing."""
    proc = compose_config(env_file=ROOT / ".env.example")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout) == config


def test_dockerfile() -> None:
    text = (ROOT / "deploy/Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r'^ENTRYPOINT \["perg"\]$', text, re.M)
    for part in ("perg", "services", "schemas"):
        assert re.search(rf"^COPY {part} ", text, re.M), part
    # the model server image: deploy/llama-server.sh's default install (the prebuilt server of
    # the pinned xllamacpp wheel), at the path that version installs to
    script = (ROOT / "deploy/llama-server.sh").read_text()
    version = re.search(r'^XLLAMACPP="([^"]+)"', script, re.M)
    assert version is not None
    assert "bash /src/deploy/llama-server.sh install" in text
    assert f"/opt/perg/llama-server-{version[1]}-wheel/bin/llama-server" in text
    gguf_name = re.search(r'^GGUF_NAME="([^"]+)"', script, re.M)
    assert gguf_name is not None
    assert f"/opt/perg/llama-server-{version[1]}-wheel/models/{gguf_name[1]} " in text
    assert re.search(r"^FROM python:3\.11-slim AS llama-server$", text, re.M)
    lock = (ROOT / "deploy/llama-server.lock").read_text()
    assert f"xllamacpp=={version[1]} " in lock and "--hash=sha256:" in lock
    gguf_py = re.search(r'^GGUF_PY="([^"]+)"', script, re.M)  # deploy/gguf-requantize.py's
    assert gguf_py is not None and f"gguf=={gguf_py[1]} " in lock
    # the workers' image installs the hash-locked dependencies
    assert "pip install --require-hashes -r requirements.lock" in text
    # the default target (the last stage) stays the perg image
    assert text.rstrip().splitlines()[-1] == 'CMD ["--help"]'
    ignore = (ROOT / "deploy/Dockerfile.dockerignore").read_text().splitlines()
    for path in ("deploy/llama-server.sh", "deploy/lib/**", "deploy/llama-server.lock",
                 "deploy/llama-wheel-server.py", "deploy/gguf-requantize.py",
                 "deploy/requirements.lock"):  # fmt: skip
        assert f"!{path}" in ignore, path
