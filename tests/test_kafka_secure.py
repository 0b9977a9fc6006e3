"""``deploy/kafka.sh start --secure``: a SASL_SSL (SCRAM) broker, its client.env, and clients
refused in one line, exit 3, within seconds (wrong password, untrusted CA); its mutual TLS
listener (client-mtls.env): the pipeline runs with the client certificate, and a client without
one, or with one no CA of the broker's signed, is refused the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka_fixture import SecureKafka, secure_kafka
from pipeline_harness import running_pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
NOWHERE = "http://127.0.0.1:9/v1"  # submit does not call the models
SUBMIT = ("submit", "--model-url", NOWHERE, "--model", "m",
          "--judge-url", NOWHERE, "--judge-model", "m", "--sample", "2")  # fmt: skip


@pytest.fixture(scope="module")
def secure() -> Iterator[SecureKafka]:
    with secure_kafka() as kafka:
        yield kafka


@pytest.fixture
def client_env(secure: SecureKafka) -> dict[str, str]:
    return secure.sasl_ssl


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


def refused(env: dict[str, str]) -> str:
    """``perg submit`` with ``env``: exit 3 within seconds; its one line."""
    started = time.monotonic()
    proc = perg(env, *SUBMIT)
    assert proc.returncode == 3, proc.stderr
    assert time.monotonic() - started < 30
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("perg submit: cannot connect to Kafka at ")
    return line


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA of openssl's: (certificate, key)."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    return cert, key


def test_wrong_password_is_one_line_exit_3(client_env: dict[str, str], tmp_path: Path) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    line = refused({**client_env, "PERG_KAFKA_SASL_PASSWORD_FILE": str(wrong)})
    assert "rejected the SCRAM-SHA-512 credentials of user 'perg'" in line
    assert "not-the-password" not in line


def test_untrusted_ca_is_one_line_exit_3(client_env: dict[str, str], tmp_path: Path) -> None:
    other, _ = make_ca(tmp_path, "other-ca")
    line = refused({**client_env, "PERG_KAFKA_SSL_CAFILE": str(other)})
    assert "TLS certificate is not trusted by" in line


def test_pipeline_over_mutual_tls(secure: SecureKafka, tmp_path: Path) -> None:
    """Every worker and the CLI on the SSL listener with client-mtls.env's certificate."""
    rows = 4
    prefix = f"mtls-{uuid.uuid4().hex[:8]}"
    mtls = secure.mtls
    with running_pipeline(secure.plaintext, tmp_path, prefix, kafka_security=mtls) as pipeline:
        assert pipeline.env["PERG_KAFKA"] == secure.mtls["PERG_KAFKA"] != secure.plaintext
        run_id = pipeline.submit("--sample", str(rows), "--seed", "2")
        done = pipeline.perg("status", run_id, "--wait", "--timeout", "300", timeout=330)
        assert done.returncode == 0, done.stderr[-2000:]
        [stored] = pipeline.sql(
            "SELECT count(*) AS n, count(DISTINCT (row_id, setting, method)) AS d "
            f"FROM results WHERE run_id = '{run_id}'"
        )
        assert stored == {"n": rows * 15, "d": rows * 15}


def test_no_client_certificate_is_one_line_exit_3(secure: SecureKafka) -> None:
    without = {k: v for k, v in secure.mtls.items() if "CERTFILE" not in k and "KEYFILE" not in k}
    line = refused(without)
    assert "requires a client certificate (mutual TLS): set PERG_KAFKA_SSL_CERTFILE" in line


def test_client_certificate_of_another_ca_is_one_line_exit_3(
    secure: SecureKafka, tmp_path: Path
) -> None:
    ca, ca_key = make_ca(tmp_path, "rogue-ca")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=perg-client",
                    "-keyout", str(key), "-out", str(tmp_path / "client.csr")],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(["openssl", "x509", "-req", "-in", str(tmp_path / "client.csr"), "-CA", str(ca),
                    "-CAkey", str(ca_key), "-CAcreateserial", "-days", "1", "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    line = refused({**secure.mtls, "PERG_KAFKA_SSL_CERTFILE": str(cert),
                    "PERG_KAFKA_SSL_KEYFILE": str(key)})  # fmt: skip
    assert f"the broker refused the client certificate {cert} (not signed by a CA it trusts" in line
