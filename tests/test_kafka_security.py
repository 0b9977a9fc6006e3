"""Kafka security settings (PERG_KAFKA_*) and the one place building client options."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from perg.config import load_settings
from perg.errors import InputError
from perg.kafka import client_options, topic_layout

SECURITY_VARS = (
    "SECURITY_PROTOCOL", "SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD_FILE",
    "SASL_PASSWORD_ENV", "SSL_CAFILE", "SSL_CERTFILE", "SSL_KEYFILE",
)  # fmt: skip
P = "SECURITY_PROTOCOL"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in SECURITY_VARS:
        monkeypatch.delenv(f"PERG_KAFKA_{name}", raising=False)
    monkeypatch.setenv("PERG_CONFIG", str(tmp_path / "perg.toml"))
    (tmp_path / "perg.toml").write_text("")


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    """A self-signed CA made with openssl, as deploy/kafka.sh --secure makes one."""
    key, cert = tmp_path / "ca.key", tmp_path / "ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=perg-test-ca"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert


def test_plaintext_by_default() -> None:
    security = load_settings().kafka_security
    assert security.protocol == "PLAINTEXT"
    options = client_options(load_settings())
    assert options["security_protocol"] == "PLAINTEXT" and "ssl_context" not in options


def test_sasl_ssl_from_a_password_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret-value\n")
    monkeypatch.setenv("PERG_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("PERG_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("PERG_KAFKA_SASL_USERNAME", "perg")
    monkeypatch.setenv("PERG_KAFKA_SASL_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("PERG_KAFKA_SSL_CAFILE", str(ca))
    settings = load_settings()
    assert "s3cret" not in repr(settings)  # never in a log line that prints the settings
    options = client_options(settings)
    assert options["sasl_plain_password"] == "s3cret-value"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    context = options["ssl_context"]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_password_from_a_named_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERG_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("PERG_KAFKA_SASL_USERNAME", "perg")
    monkeypatch.setenv("PERG_KAFKA_SASL_PASSWORD_ENV", "MY_KAFKA_SECRET")
    monkeypatch.setenv("MY_KAFKA_SECRET", "from-env")
    assert load_settings().kafka_security.sasl_password == "from-env"
    monkeypatch.delenv("MY_KAFKA_SECRET")
    with pytest.raises(InputError, match="MY_KAFKA_SECRET: that environment variable is not"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({P: "TLS"}, "PERG_KAFKA_SECURITY_PROTOCOL='TLS' is not one of"),
        ({P: "SASL_SSL", "SASL_MECHANISM": "GSSAPI"}, "PERG_KAFKA_SASL_MECHANISM="),
        ({P: "SASL_SSL", "SASL_USERNAME": "u"}, "needs PERG_KAFKA_SASL_USERNAME and"),
        ({"SASL_USERNAME": "u", "SASL_PASSWORD_ENV": "HOME"}, "does not use SASL"),
        ({"SSL_CAFILE": "/etc/hostname"}, "does not use TLS"),
        ({P: "SSL", "SSL_CAFILE": "/no/such.pem"}, "SSL_CAFILE=/no/such.pem: no such"),
        ({P: "SSL", "SSL_CERTFILE": "/etc/hostname"}, "needs both"),
        ({P: "SASL_SSL", "SASL_USERNAME": "u", "SASL_PASSWORD_FILE": "/no/pw"},
         "PASSWORD_FILE=/no/pw: cannot read it"),
    ],
)  # fmt: skip
def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(f"PERG_KAFKA_{name}", value)
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        load_settings()


def test_untrusted_files_are_bad_input(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    monkeypatch.setenv("PERG_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("PERG_KAFKA_SSL_CAFILE", str(junk))
    with pytest.raises(InputError, match="cannot load the TLS files"):
        client_options(load_settings())


@pytest.mark.parametrize(
    ("brokers", "replication", "min_insync", "expected"),
    [(1, None, None, (1, 1)), (2, None, None, (2, 1)), (3, None, None, (3, 2)),
     (5, None, None, (3, 2)), (5, 5, 3, (5, 3))],
)  # fmt: skip
def test_topic_layout_defaults_from_the_cluster(
    monkeypatch: pytest.MonkeyPatch,
    brokers: int,
    replication: int | None,
    min_insync: int | None,
    expected: tuple[int, int],
) -> None:
    if replication:
        monkeypatch.setenv("PERG_REPLICATION", str(replication))
    if min_insync:
        monkeypatch.setenv("PERG_MIN_INSYNC_REPLICAS", str(min_insync))
    assert topic_layout(load_settings(), brokers) == expected


def test_replication_beyond_the_cluster_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERG_REPLICATION", "3")
    with pytest.raises(InputError, match="PERG_REPLICATION=3 needs at least 3 brokers"):
        topic_layout(load_settings(), 1)
