"""Every Prometheus metric of PERG Stream, and the HTTP endpoint serving them with ``/ready``.

One :class:`Metrics` per worker, in a ``CollectorRegistry`` of its own (never the global one),
so several workers in one test process do not collide. Counted where things are counted
already: the consume-commit loop and its ledgers (services/_runtime.py), the model client's
attempts and retries (perg/client), the sink's store writes (services/sink/service.py) and
its live SQL (services/sink/live/api.py). Served only when ``PERG_METRICS_PORT`` is set
(``PERG_METRICS_BIND``, default 127.0.0.1); docs/metrics.md lists the metrics and the
queries that matter.

``/ready`` answers 200 once the worker's consumer has joined its group (the sink opens its
results file before it starts consuming), else 503.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from perg.errors import InputError
from perg.hosts import HostNotAllowed, parse_url_host

log = logging.getLogger("perg.observe")

CALL_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 300)
TOKENS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
WRITE_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
QUERY_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
MAX_ENDPOINTS = 64  # distinct endpoint labels; more are counted as "other" (bounded series)
OTHER_ENDPOINT = "other"

# (topic, partition, lag in messages) of each partition a worker owns
LagSource = Callable[[], Iterable[tuple[str, int, int]]]


@dataclass(frozen=True, slots=True)
class EndpointMetrics:
    """The model-call metrics of one endpoint (``host:port``), labels bound once."""

    calls_ok: Counter
    calls_failed: Counter
    retries: Counter
    timeouts: Counter
    connection_errors: Counter
    latency: Histogram
    tokens_in: Histogram
    tokens_out: Histogram
    _http_errors: Counter
    _endpoint: str

    def http_error(self, status: int) -> None:
        self._http_errors.labels(self._endpoint, str(status)).inc()


class _Lag(Collector):
    def __init__(self, service: str, source: LagSource) -> None:
        self.service = service
        self.source = source

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "perg_committed_offset_lag",
            "Messages of a partition after the worker's committed offset (the partition's end "
            "offset as last fetched, minus the committed offset)",
            labels=["service", "topic", "partition"],
        )
        for topic, partition, lag in self.source():
            family.add_metric([self.service, topic, str(partition)], lag)
        yield family


class Metrics:
    """Every metric of one worker (``service``), in its own registry."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        r = self.registry
        by_topic = ["service", "topic"]
        self.consumed = Counter("perg_messages_consumed", "Messages taken from Kafka",
                                by_topic, registry=r)  # fmt: skip
        self.finished = Counter(
            "perg_messages_finished",
            "Messages finished: outputs acknowledged by Kafka, or dead-lettered",
            by_topic, registry=r,
        )  # fmt: skip
        self.retried = Counter("perg_messages_retried", "Handler attempts retried",
                               by_topic, registry=r)  # fmt: skip
        self.dead_lettered = Counter("perg_messages_dead_lettered", "Messages dead-lettered",
                                     by_topic, registry=r)  # fmt: skip
        self.in_flight = Gauge("perg_messages_in_flight", "Messages in progress",
                               ["service"], registry=r)  # fmt: skip
        by_endpoint = ["endpoint"]
        self._calls = Counter("perg_model_calls", "Model calls (with their retries) by outcome",
                              ["endpoint", "outcome"], registry=r)  # fmt: skip
        self._retries = Counter("perg_model_retries", "Model call attempts retried",
                                by_endpoint, registry=r)  # fmt: skip
        self._timeouts = Counter("perg_model_timeouts", "Model call attempts that timed out",
                                 by_endpoint, registry=r)  # fmt: skip
        self._connection_errors = Counter(
            "perg_model_connection_errors", "Model call attempts that got no reply (no timeout)",
            by_endpoint, registry=r,
        )  # fmt: skip
        self._http_errors = Counter(
            "perg_model_http_errors", "Model call attempts answered with a non-2xx status",
            ["endpoint", "status"], registry=r,
        )  # fmt: skip
        self._latency = Histogram(
            "perg_model_call_seconds", "Wall time of a successful model call, retries included",
            by_endpoint, buckets=CALL_SECONDS, registry=r,
        )  # fmt: skip
        self._tokens = Histogram(
            "perg_model_tokens", "Tokens of a successful model call as the server reported them",
            ["endpoint", "direction"], buckets=TOKENS, registry=r,
        )  # fmt: skip
        self.rows_written = Counter("perg_sink_rows_written", "Rows the sink stored, by table",
                                    ["table"], registry=r)  # fmt: skip
        self.write_seconds = Histogram(
            "perg_sink_write_seconds", "Wall time of one store write transaction, by table",
            ["table"], buckets=WRITE_SECONDS, registry=r,
        )  # fmt: skip
        self.live_query_seconds = Histogram(
            "perg_live_query_seconds", "Wall time of a live SQL query (/sql), any outcome",
            buckets=QUERY_SECONDS, registry=r,
        )  # fmt: skip
        self._endpoints: dict[str, EndpointMetrics] = {}

    def watch(self, in_flight: Callable[[], int], lag: LagSource) -> None:
        """Read the messages in progress and the partitions' lag at every scrape."""
        self.in_flight.labels(self.service).set_function(in_flight)
        self.registry.register(_Lag(self.service, lag))

    def endpoint(self, base_url: str) -> EndpointMetrics:
        """The metrics of the endpoint at ``base_url``, labelled ``host:port``."""
        try:
            label = str(parse_url_host(base_url))
        except HostNotAllowed:
            label = OTHER_ENDPOINT
        if label not in self._endpoints and len(self._endpoints) >= MAX_ENDPOINTS:
            label = OTHER_ENDPOINT
        found = self._endpoints.get(label)
        if found is None:
            found = self._endpoints[label] = EndpointMetrics(
                calls_ok=self._calls.labels(label, "ok"),
                calls_failed=self._calls.labels(label, "failed"),
                retries=self._retries.labels(label),
                timeouts=self._timeouts.labels(label),
                connection_errors=self._connection_errors.labels(label),
                latency=self._latency.labels(label),
                tokens_in=self._tokens.labels(label, "in"),
                tokens_out=self._tokens.labels(label, "out"),
                _http_errors=self._http_errors,
                _endpoint=label,
            )
        return found

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


async def serve(metrics: Metrics, ready: Callable[[], bool], bind: str, port: int) -> web.AppRunner:
    """Serve ``/metrics`` and ``/ready`` on ``bind:port``; the caller cleans the runner up.
    :class:`InputError` when that address cannot be bound (in use, not this host's)."""

    async def scrape(_: web.Request) -> web.Response:
        headers = {"Content-Type": CONTENT_TYPE_LATEST}
        return web.Response(body=metrics.exposition(), headers=headers)

    async def readiness(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: the consumer has not joined its group\n")

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/ready", readiness)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, bind, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise InputError(
            f"PERG_METRICS_BIND/PERG_METRICS_PORT: cannot serve metrics on {bind}:{port}: "
            f"{exc.strerror or exc}"
        ) from exc
    log.info("service=%s metrics on http://%s:%d/metrics", metrics.service, bind, port)
    return runner
