"""One way to configure PERG Stream: one :class:`Settings`, loaded once and passed down.

Each process's entry point (``perg`` in perg/cli, ``perg worker``) calls :func:`load_settings`
once and passes the :class:`Settings` down as an argument; no other module reads a ``PERG_``
variable. Precedence (highest first): command-line flag (the entry point applies it with
``dataclasses.replace``), environment variable, config file, default. The config file is
``$PERG_CONFIG`` or ``./perg.toml`` when it exists; its keys are the environment names without
the ``PERG_`` prefix, lower-cased (``kafka = "127.0.0.1:9092"``). A process started by another
(perg demo's workers) gets its configuration as an explicit environment built from Settings.
Secrets are read where named, once: the SASL password from its file or named variable (here),
a model's API token from the variable its endpoint names (perg/client, at connection time).

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
    PERG_SINK_TIMEOUT_S    how long a command waits for the sink's answer to one request [30]
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
    PERG_MODEL_MAX_IN_FLIGHT     a worker's model calls on the wire at once per endpoint [64]
    PERG_MODEL_TIMEOUT_S         ceiling of any model call attempt's reply deadline [300]
    PERG_MODEL_MAX_RETRIES       retries of a failing model call [5]
    PERG_MODEL_CONNECT_TIMEOUT_S deadline to open a connection to a model server [10]
    PERG_MODEL_DEADLINE_BASE_S   first reply deadline's allowance for queueing [30]
    PERG_MODEL_MIN_TOKENS_PER_S  slowest generation speed the first deadline allows [50]
    PERG_METRICS_PORT      port of a worker's Prometheus /metrics and /ready; 0: not served [0]
    PERG_METRICS_BIND      address /metrics and /ready bind [127.0.0.1]
    PERG_MODEL_HOSTS       model hosts a worker may call: comma-separated host[:port] patterns,
                           '*' within a label, 'loopback' (see perg/hosts.py) [loopback]
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from perg.client._types import ClientTuning
from perg.errors import InputError
from perg.hosts import DEFAULT_MODEL_HOSTS, ModelHosts

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Every setting's name (the variable without ``PERG_``, lower-cased: the perg.toml key).
# tests/test_config.py checks that the loader reads each one and that the docs list it.
KNOWN_SETTINGS = frozenset(
    {
        "kafka",
        "db",
        "data_dir",
        "partitions",
        "topic_prefix",
        "sink_url",
        "sink_bind",
        "sink_port",
        "sink_token",
        "sink_public_hosts",
        "sink_timeout_s",
        "session_timeout_s",
        "worker_in_flight",
        "worker_instance",
        "model_max_in_flight",
        "model_timeout_s",
        "model_max_retries",
        "model_connect_timeout_s",
        "model_deadline_base_s",
        "model_min_tokens_per_s",
        "db_lock_wait_s",
        "snapshot_every_s",
        "sql_timeout_s",
        "sql_row_cap",
        "sql_max_bytes",
        "model_token_envs",
        "model_hosts",
        "metrics_port",
        "metrics_bind",
        "kafka_security_protocol",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password_file",
        "kafka_sasl_password_env",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "replication",
        "min_insync_replicas",
        "home",
    }
)


def default_data_dir() -> Path:
    """``../shared/perg`` beside the project root (or the cwd): ``data_dir``'s default."""
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


DEFAULT_SINK_PORT = 8765


@dataclass(frozen=True)
class Settings:
    """Every ``PERG_`` setting, typed and validated (the module docstring lists them).

    Built by :func:`load_settings`; the defaults here are the documented ones. A flag
    overrides a setting with ``dataclasses.replace(settings, kafka=args.bootstrap)``."""

    kafka: str = "127.0.0.1:9092"
    db: Path = Path("perg-results/perg.duckdb")
    data_dir: Path = field(default_factory=default_data_dir)
    partitions: int = 6
    topic_prefix: str = "perg"
    sink_url: str = f"http://127.0.0.1:{DEFAULT_SINK_PORT}"
    sink_bind: str = "127.0.0.1"
    sink_port: int = DEFAULT_SINK_PORT
    sink_token: str | None = field(default=None, repr=False)
    sink_public_hosts: frozenset[str] = frozenset()  # lower-cased host names, no ports
    sink_timeout_s: float = 30.0
    session_timeout_s: float = 6.0
    worker_in_flight: int | None = None  # None: the service's default
    worker_instance: str | None = None
    db_lock_wait_s: float = 120.0
    snapshot_every_s: float = 30.0
    sql_timeout_s: float = 10.0
    sql_row_cap: int = 10_000
    sql_max_bytes: int = 16 * 1024 * 1024
    model_token_envs: tuple[str, ...] = ()  # NAME or NAME@HOST[:PORT] (perg.client)
    model_client: ClientTuning = field(default_factory=ClientTuning)  # PERG_MODEL_* tuning
    model_hosts: ModelHosts = field(default_factory=lambda: ModelHosts.parse(DEFAULT_MODEL_HOSTS))
    metrics_port: int | None = None  # None: metrics and readiness not served
    metrics_bind: str = "127.0.0.1"
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    replication: int | None = None  # None: decided from the cluster (perg.kafka)
    min_insync_replicas: int | None = None
    home: Path = field(default_factory=lambda: Path.home() / ".cache" / "perg")
    # the names given by the environment or the config file rather than defaulted
    configured: frozenset[str] = field(default=frozenset(), compare=False)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The :class:`Settings` of ``environ`` (default: this process's environment) over the
    config file over the defaults, each value validated; bad input raises InputError naming
    the variable. Called once per process, by its entry point."""
    source = _Source(os.environ if environ is None else environ)
    default = Settings()
    port = source.port("sink_port", DEFAULT_SINK_PORT, minimum=1)
    return Settings(
        kafka=bootstrap_servers(source.text("kafka", default.kafka)),
        db=Path(source.text("db", str(default.db))),
        data_dir=Path(source.text("data_dir", "")) if source.has("data_dir") else default.data_dir,
        partitions=source.whole("partitions", default.partitions),
        topic_prefix=source.text("topic_prefix", default.topic_prefix),
        sink_url=source.text("sink_url", f"http://127.0.0.1:{port}"),
        sink_bind=source.text("sink_bind", default.sink_bind),
        sink_port=port,
        sink_token=source.text("sink_token", "") or None,
        sink_public_hosts=frozenset(h.lower() for h in source.items("sink_public_hosts")),
        sink_timeout_s=source.seconds("sink_timeout_s", default.sink_timeout_s),
        session_timeout_s=source.seconds("session_timeout_s", default.session_timeout_s),
        worker_in_flight=source.optional_whole("worker_in_flight"),
        worker_instance=source.text("worker_instance", "") or None,
        db_lock_wait_s=source.seconds("db_lock_wait_s", default.db_lock_wait_s),
        snapshot_every_s=source.seconds("snapshot_every_s", default.snapshot_every_s),
        sql_timeout_s=source.seconds("sql_timeout_s", default.sql_timeout_s, positive=True),
        sql_row_cap=source.whole("sql_row_cap", default.sql_row_cap),
        sql_max_bytes=source.whole("sql_max_bytes", default.sql_max_bytes),
        model_token_envs=source.items("model_token_envs"),
        model_client=source.client_tuning(),
        model_hosts=ModelHosts.parse(source.text("model_hosts", DEFAULT_MODEL_HOSTS)),
        metrics_port=source.port("metrics_port", 0, minimum=0) or None,
        metrics_bind=source.text("metrics_bind", default.metrics_bind),
        kafka_security=source.kafka_security(),
        replication=source.optional_whole("replication"),
        min_insync_replicas=source.optional_whole("min_insync_replicas"),
        home=Path(source.text("home", str(default.home))),
        configured=frozenset(name for name in KNOWN_SETTINGS if source.has(name)),
    )


class _Source:
    """The raw values: ``PERG_<NAME>`` of the environment, else the config file's ``name``."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.file = _file_values(environ)

    def has(self, name: str) -> bool:
        return bool(self.text(name, ""))

    def text(self, name: str, default: str) -> str:
        env = self.environ.get(f"PERG_{name.upper()}")
        if env:
            return env
        value = self.file.get(name)
        return str(value) if value is not None else default

    def items(self, name: str) -> tuple[str, ...]:
        """A comma-separated list, each entry stripped, empty entries dropped."""
        return tuple(e.strip() for e in self.text(name, "").split(",") if e.strip())

    def whole(self, name: str, default: int, *, minimum: int = 1) -> int:
        raw = self.text(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise InputError(f"PERG_{name.upper()}={raw!r} is not a whole number") from None
        if value < minimum:
            raise InputError(f"PERG_{name.upper()}={value} must be at least {minimum}")
        return value

    def optional_whole(self, name: str) -> int | None:
        """A whole number >= 1, or None when unset."""
        return self.whole(name, 1) if self.has(name) else None

    def port(self, name: str, default: int, *, minimum: int) -> int:
        port = self.whole(name, default, minimum=minimum)
        if port > 65535:
            raise InputError(f"PERG_{name.upper()}={port} is not a port ({minimum} to 65535)")
        return port

    def seconds(
        self, name: str, default: float, *, positive: bool = False, unit: str = "seconds"
    ) -> float:
        """A finite number >= 0 (> 0 when ``positive``) of ``unit``, named in the errors."""
        raw = self.text(name, str(default))
        try:
            value = float(raw)
        except ValueError:
            raise InputError(f"PERG_{name.upper()}={raw!r} is not a number of {unit}") from None
        if not 0 <= value < math.inf:
            raise InputError(f"PERG_{name.upper()}={raw!r} must be a finite number of {unit} >= 0")
        if positive and value == 0:
            raise InputError(f"PERG_{name.upper()} must be more than 0 {unit}")
        return value

    def client_tuning(self) -> ClientTuning:
        """The model client's ``PERG_MODEL_*`` tuning (see perg.client.ClientTuning)."""
        default = ClientTuning()
        return ClientTuning(
            max_in_flight=self.whole("model_max_in_flight", default.max_in_flight),
            timeout_s=self.seconds("model_timeout_s", default.timeout_s, positive=True),
            max_retries=self.whole("model_max_retries", default.max_retries, minimum=0),
            connect_timeout_s=self.seconds(
                "model_connect_timeout_s", default.connect_timeout_s, positive=True
            ),
            deadline_base_s=self.seconds(
                "model_deadline_base_s", default.deadline_base_s, positive=True
            ),
            min_tokens_per_s=self.seconds(
                "model_min_tokens_per_s", default.min_tokens_per_s, positive=True, unit="tokens/s"
            ),
        )

    def kafka_security(self) -> KafkaSecurity:
        protocol = self.text("kafka_security_protocol", "PLAINTEXT").upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise InputError(
                f"PERG_KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of "
                + ", ".join(SECURITY_PROTOCOLS)
            )
        mechanism = self.text("kafka_sasl_mechanism", "SCRAM-SHA-512").upper()
        if mechanism not in SASL_MECHANISMS:
            raise InputError(
                f"PERG_KAFKA_SASL_MECHANISM={mechanism!r} is not one of "
                + ", ".join(SASL_MECHANISMS)
            )
        security = KafkaSecurity(
            protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_username=self.text("kafka_sasl_username", "") or None,
            sasl_password=self.sasl_password(),
            ssl_cafile=self.pem_file("kafka_ssl_cafile"),
            ssl_certfile=self.pem_file("kafka_ssl_certfile"),
            ssl_keyfile=self.pem_file("kafka_ssl_keyfile"),
        )
        security.check()
        return security

    def sasl_password(self) -> str | None:
        path = self.text("kafka_sasl_password_file", "")
        env_name = self.text("kafka_sasl_password_env", "")
        if path and env_name:
            raise InputError(
                "set one of PERG_KAFKA_SASL_PASSWORD_FILE and PERG_KAFKA_SASL_PASSWORD_ENV, "
                "not both"
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
            value = self.environ.get(env_name, "")
            if not value:
                raise InputError(
                    f"PERG_KAFKA_SASL_PASSWORD_ENV={env_name}: that environment variable is not set"
                )
            return value
        return None

    def pem_file(self, name: str) -> Path | None:
        raw = self.text(name, "")
        if not raw:
            return None
        path = Path(raw)
        if not path.is_file():
            raise InputError(f"PERG_{name.upper()}={raw}: no such file")
        return path


def _file_values(environ: Mapping[str, str]) -> dict[str, Any]:
    path = Path(environ.get("PERG_CONFIG", "perg.toml"))
    if not path.is_file():
        if "PERG_CONFIG" in environ:
            what = "is not a file" if path.exists() else "does not exist"
            raise InputError(f"PERG_CONFIG names {path}, which {what}")
        return {}
    try:
        with path.open("rb") as fh:
            values = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    for key, value in values.items():
        if isinstance(value, dict):
            raise InputError(f"{path}: unknown section [{key}]; settings are top-level keys")
        if key not in KNOWN_SETTINGS:
            raise InputError(
                f"{path}: unknown setting {key!r} (known: {', '.join(sorted(KNOWN_SETTINGS))})"
            )
    return values


def is_http_url(url: str) -> bool:
    """Whether ``url`` is an http:// or https:// URL with a host (and a usable port)."""
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # an unclosed IPv6 bracket, a port out of range
        return False


def bootstrap_servers(value: str, source: str = "PERG_KAFKA") -> str:
    """``value`` when it is a comma-separated list of HOST[:PORT] (IPv6 hosts in brackets),
    as Kafka clients take it; ``source`` names where it came from in the error."""
    for server in (s.strip() for s in value.split(",")):
        try:
            parts = urlsplit(f"//{server}")
            valid = bool(server) and bool(parts.hostname) and parts.port != 0
            valid = valid and not (parts.username or parts.path or parts.query or parts.fragment)
        except ValueError:  # a port that is no number or out of range, an unclosed bracket
            valid = False
        if not valid:
            raise InputError(
                f"{source}={value!r}: {server!r} is not HOST:PORT "
                "(a comma-separated list, e.g. 127.0.0.1:9092,broker2:9092)"
            )
    return value
