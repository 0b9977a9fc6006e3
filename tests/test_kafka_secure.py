"""``deploy/kafka.sh start --secure``: a SASL_SSL (SCRAM) broker, its client.env, and clients
refused in one line, exit 3, within seconds (wrong password, untrusted CA)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka_fixture import kafka_script

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
NOWHERE = "http://127.0.0.1:9/v1"  # submit does not call the models
SUBMIT = ("submit", "--model-url", NOWHERE, "--model", "m",
          "--judge-url", NOWHERE, "--judge-model", "m", "--sample", "2")  # fmt: skip


@pytest.fixture(scope="module")
def client_env() -> Iterator[dict[str, str]]:
    if shutil.which("java") is None or shutil.which("openssl") is None:
        pytest.skip("needs java and openssl")
    state = Path(tempfile.mkdtemp(prefix="perg-kafka-secure-"))
    try:
        proc = kafka_script(state, "start", "--secure")
        assert proc.returncode == 0, proc.stderr
        lines = (state / "client.env").read_text().splitlines()
        yield dict(line.split("=", 1) for line in lines)
    finally:
        kafka_script(state, "stop", timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def perg(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PERG_KAFKA")}
    full.update(
        env, PERG_TOPIC_PREFIX="secure-test", PERG_DATA_DIR=str(ROOT.parent / "shared" / "perg")
    )
    return subprocess.run([sys.executable, "-m", "perg", *args], env=full, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_client_env_names_every_setting(client_env: dict[str, str]) -> None:
    assert client_env["PERG_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert client_env["PERG_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert Path(client_env["PERG_KAFKA_SASL_PASSWORD_FILE"]).is_file()  # a path, not the value
    assert Path(client_env["PERG_KAFKA_SSL_CAFILE"]).read_text().startswith("-----BEGIN")


def test_submit_over_sasl_ssl(client_env: dict[str, str]) -> None:
    proc = perg(client_env, *SUBMIT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_wrong_password_is_one_line_exit_3(client_env: dict[str, str], tmp_path: Path) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    started = time.monotonic()
    proc = perg({**client_env, "PERG_KAFKA_SASL_PASSWORD_FILE": str(wrong)}, *SUBMIT)
    assert proc.returncode == 3, proc.stderr
    assert time.monotonic() - started < 30
    [line] = proc.stderr.strip().splitlines()
    assert "rejected the SCRAM-SHA-512 credentials of user 'perg'" in line
    assert "not-the-password" not in proc.stderr


def test_untrusted_ca_is_one_line_exit_3(client_env: dict[str, str], tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=other", "-keyout", str(tmp_path / "k"), "-out", str(other)],
                   check=True, capture_output=True)  # fmt: skip
    started = time.monotonic()
    proc = perg({**client_env, "PERG_KAFKA_SSL_CAFILE": str(other)}, *SUBMIT)
    assert proc.returncode == 3, proc.stderr
    assert time.monotonic() - started < 30
    [line] = proc.stderr.strip().splitlines()
    assert "TLS certificate is not trusted by" in line
