"""One way to configure PERG Stream: environment variables over one optional TOML file.

Precedence (highest first): command-line flag, environment variable, config file, default.
The config file is ``$PERG_CONFIG`` or ``./perg.toml`` when it exists; its keys are the
environment names without the ``PERG_`` prefix, lower-cased (``kafka = "127.0.0.1:9092"``).

Variables (default in brackets):
    PERG_KAFKA             Kafka bootstrap servers [127.0.0.1:9092]
    PERG_DB                DuckDB results file, owned by the sink [perg-results/perg.duckdb]
    PERG_DATA_DIR          folder with pergdata.csv and paper_protocol.json [../shared/perg]
    PERG_PARTITIONS        partitions per topic when topics are created [6]
    PERG_TOPIC_PREFIX      prefix of every topic name; isolates deployments [perg]
    PERG_SINK_URL          where the sink's HTTP API answers [http://127.0.0.1:$PERG_SINK_PORT]
    PERG_SINK_BIND         address the sink's HTTP API binds [127.0.0.1]
    PERG_SINK_PORT         port of the sink's HTTP API [8765]
    PERG_SINK_TOKEN        bearer token of the sink API, at least 16 characters; required off
                           loopback [unset]
    PERG_SINK_PUBLIC_HOSTS comma-separated host names the sink API answers to besides loopback
                           ones (Host and Origin checks; e.g. perg.example.org) [unset]
    PERG_SESSION_TIMEOUT_S workers' Kafka session timeout; >= the broker's minimum (6) [6]
    PERG_WORKER_IN_FLIGHT  messages a worker keeps in progress [per service, see perg worker]
    PERG_WORKER_INSTANCE   a worker's stable name in its group (static membership) [unset]
    PERG_DB_LOCK_WAIT_S    how long the sink waits for the results file's write lock [120]
    PERG_SNAPSHOT_EVERY_S  seconds between the sink's Parquet snapshots [30]
    PERG_SQL_TIMEOUT_S     live SQL query timeout [10]
    PERG_SQL_ROW_CAP       live SQL row cap [10000]
    PERG_SQL_MAX_BYTES     live SQL answer size cap in bytes [16777216]
    PERG_MODEL_TOKEN_ENVS  environment variables a worker may send as a model API token, comma-
                           separated NAME (any host) or NAME@HOST[:PORT]; empty: none [unset]
    PERG_HOME              cache of installed tools: Kafka jars, llama.cpp venv [~/.cache/perg]

Kafka security and replication (every Kafka client: workers, perg submit, topic admin):
    PERG_KAFKA_SECURITY_PROTOCOL  PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL [PLAINTEXT]
    PERG_KAFKA_SASL_MECHANISM     PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 [SCRAM-SHA-512]
    PERG_KAFKA_SASL_USERNAME      SASL user name [unset]
    PERG_KAFKA_SASL_PASSWORD_FILE file whose first line is the SASL password [unset]
    PERG_KAFKA_SASL_PASSWORD_ENV  name of an environment variable holding it (never a value
                                  on a command line) [unset]
    PERG_KAFKA_SSL_CAFILE         PEM file of the CA(s) to trust [the system's]
    PERG_KAFKA_SSL_CERTFILE       PEM client certificate, for mutual TLS [unset]
    PERG_KAFKA_SSL_KEYFILE        PEM key of that certificate [unset]
    PERG_REPLICATION              replication factor of created topics [3 when the cluster
                                  has 3 brokers or more, else the number of brokers]
    PERG_MIN_INSYNC_REPLICAS      min.insync.replicas of created topics [replication - 1, >= 1]
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from perg.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@cache
def _file_values() -> dict[str, Any]:
    path = Path(os.environ.get("PERG_CONFIG", "perg.toml"))
    if not path.is_file():
        if "PERG_CONFIG" in os.environ:
            raise InputError(f"PERG_CONFIG names {path}, which does not exist")
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from exc


def setting(name: str, default: str) -> str:
    """Value of ``PERG_<NAME>`` from the environment, else the config file, else ``default``."""
    env = os.environ.get(f"PERG_{name.upper()}")
    if env:
        return env
    value = _file_values().get(name.lower())
    return str(value) if value is not None else default


def int_setting(name: str, default: int, *, minimum: int = 1) -> int:
    """``setting(name)`` as a whole number of at least ``minimum``; bad values name the variable."""
    raw = setting(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"PERG_{name.upper()}={raw!r} is not a whole number") from None
    if value < minimum:
        raise InputError(f"PERG_{name.upper()}={value} must be at least {minimum}")
    return value


def seconds_setting(name: str, default: float) -> float:
    """``setting(name)`` as a finite number of seconds, 0 or more; bad values name the variable."""
    raw = setting(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"PERG_{name.upper()}={raw!r} is not a number of seconds") from None
    if not 0 <= value < math.inf:
        raise InputError(f"PERG_{name.upper()}={raw!r} must be a finite number of seconds >= 0")
    return value


def default_data_dir() -> Path:
    """``$PERG_DATA_DIR``, else ``../shared/perg`` beside the project root (or the cwd)."""
    configured = setting("data_dir", "")
    if configured:
        return Path(configured)
    for base in (PROJECT_ROOT, Path.cwd()):
        candidate = base.parent / "shared" / "perg"
        if candidate.is_dir():
            return candidate
    return PROJECT_ROOT.parent / "shared" / "perg"


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """How Kafka clients authenticate and encrypt (``PERG_KAFKA_SECURITY_PROTOCOL`` ...).

    The password is read once, from a file or a named environment variable, and never shown
    (not in ``repr``, logs or any record)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @classmethod
    def load(cls) -> KafkaSecurity:
        protocol = setting("kafka_security_protocol", "PLAINTEXT").upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise InputError(
                f"PERG_KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of "
                + ", ".join(SECURITY_PROTOCOLS)
            )
        mechanism = setting("kafka_sasl_mechanism", "SCRAM-SHA-512").upper()
        if mechanism not in SASL_MECHANISMS:
            raise InputError(
                f"PERG_KAFKA_SASL_MECHANISM={mechanism!r} is not one of "
                + ", ".join(SASL_MECHANISMS)
            )
        username = setting("kafka_sasl_username", "") or None
        password = _sasl_password()
        files = {
            name: _pem_file(name)
            for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
        }
        security = cls(
            protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_username=username,
            sasl_password=password,
            ssl_cafile=files["kafka_ssl_cafile"],
            ssl_certfile=files["kafka_ssl_certfile"],
            ssl_keyfile=files["kafka_ssl_keyfile"],
        )
        security.check()
        return security

    def check(self) -> None:
        """Settings that cannot work together are bad input, never silently ignored."""
        if self.uses_sasl and not (self.sasl_username and self.sasl_password):
            raise InputError(
                f"PERG_KAFKA_SECURITY_PROTOCOL={self.protocol} needs PERG_KAFKA_SASL_USERNAME "
                "and a password (PERG_KAFKA_SASL_PASSWORD_FILE or PERG_KAFKA_SASL_PASSWORD_ENV)"
            )
        if not self.uses_sasl and (self.sasl_username or self.sasl_password):
            raise InputError(
                f"SASL credentials are set but PERG_KAFKA_SECURITY_PROTOCOL={self.protocol} "
                "does not use SASL (SASL_PLAINTEXT or SASL_SSL)"
            )
        tls_files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if not self.uses_tls and any(tls_files):
            raise InputError(
                f"TLS files are set but PERG_KAFKA_SECURITY_PROTOCOL={self.protocol} "
                "does not use TLS (SSL or SASL_SSL)"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise InputError(
                "mutual TLS needs both PERG_KAFKA_SSL_CERTFILE and PERG_KAFKA_SSL_KEYFILE"
            )


def _sasl_password() -> str | None:
    path = setting("kafka_sasl_password_file", "")
    env_name = setting("kafka_sasl_password_env", "")
    if path and env_name:
        raise InputError(
            "set one of PERG_KAFKA_SASL_PASSWORD_FILE and PERG_KAFKA_SASL_PASSWORD_ENV, not both"
        )
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(
                f"PERG_KAFKA_SASL_PASSWORD_FILE={path}: cannot read it ({type(exc).__name__})"
            ) from None
        if not lines or not lines[0]:
            raise InputError(f"PERG_KAFKA_SASL_PASSWORD_FILE={path}: the first line is empty")
        return lines[0]
    if env_name:
        value = os.environ.get(env_name, "")
        if not value:
            raise InputError(
                f"PERG_KAFKA_SASL_PASSWORD_ENV={env_name}: that environment variable is not set"
            )
        return value
    return None


def _pem_file(name: str) -> Path | None:
    raw = setting(name, "")
    if not raw:
        return None
    path = Path(raw)
    if not path.is_file():
        raise InputError(f"PERG_{name.upper()}={raw}: no such file")
    return path


def replication_setting(name: str) -> int | None:
    """``PERG_<NAME>`` as a whole number >= 1, or None when unset (decided from the cluster)."""
    return int_setting(name, 1) if setting(name, "") else None


@dataclass(frozen=True)
class Settings:
    kafka: str
    db: Path
    data_dir: Path
    partitions: int
    topic_prefix: str
    sink_url: str
    sink_bind: str
    sink_port: int
    sink_token: str | None
    home: Path
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    replication: int | None = None
    min_insync_replicas: int | None = None

    @classmethod
    def load(cls) -> Settings:
        port = int_setting("sink_port", 8765)
        return cls(
            kafka=setting("kafka", "127.0.0.1:9092"),
            db=Path(setting("db", "perg-results/perg.duckdb")),
            data_dir=default_data_dir(),
            partitions=int_setting("partitions", 6),
            topic_prefix=setting("topic_prefix", "perg"),
            sink_url=setting("sink_url", f"http://127.0.0.1:{port}"),
            sink_bind=setting("sink_bind", "127.0.0.1"),
            sink_port=port,
            sink_token=setting("sink_token", "") or None,
            home=Path(setting("home", str(Path.home() / ".cache" / "perg"))),
            kafka_security=KafkaSecurity.load(),
            replication=replication_setting("replication"),
            min_insync_replicas=replication_setting("min_insync_replicas"),
        )
