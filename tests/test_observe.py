"""perg/observe.py without a broker: registries per worker, the model client's counts, the
bounded endpoint labels, and the /metrics and /ready endpoint."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tenacity import wait_none

from perg.client import (
    ClientPool,
    Endpoint,
    MockTransport,
    ModelError,
    TransportError,
    TransportRequest,
    TransportResponse,
)
from perg.errors import InputError
from perg.local import free_port
from perg.observe import MAX_ENDPOINTS, OTHER_ENDPOINT, Metrics, serve


def value(metrics: Metrics, name: str, **labels: str) -> float:
    text = metrics.exposition().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_workers_in_one_process_count_apart() -> None:
    first, second = Metrics("generator"), Metrics("generator")
    first.consumed.labels("generator", "perg.work").inc(3)
    assert value(first, "perg_messages_consumed_total") == 3
    assert value(second, "perg_messages_consumed_total") == 0


async def test_the_client_counts_calls_failures_retries_and_tokens() -> None:
    replies = iter(["503", "429", "timeout", "reset", "ok", "400"])

    def handler(request: TransportRequest) -> TransportResponse:
        kind = next(replies)
        if kind == "timeout":
            raise TransportError("slow", timed_out=True)
        if kind == "reset":
            raise TransportError("reset")
        if kind == "ok":
            body = {"choices": [{"message": {"content": "x"}}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 3}}  # fmt: skip
            return TransportResponse(200, orjson.dumps(body))
        return TransportResponse(int(kind), b"no")

    metrics = Metrics("generator")
    pool = ClientPool(retry_wait=wait_none(), transport=lambda e: MockTransport(handler),
                      metrics=metrics)  # fmt: skip
    client = pool.get(Endpoint("http://127.0.0.1:8080/v1", "m"))
    await client.chat([{"role": "user", "content": "hi"}], max_tokens=4)
    with pytest.raises(ModelError):
        await client.chat([{"role": "user", "content": "hi"}], max_tokens=4)
    at = {"endpoint": "127.0.0.1:8080"}
    assert value(metrics, "perg_model_calls_total", outcome="ok", **at) == 1
    assert value(metrics, "perg_model_calls_total", outcome="failed", **at) == 1
    assert value(metrics, "perg_model_retries_total", **at) == 4
    assert value(metrics, "perg_model_http_errors_total", status="503", **at) == 1
    assert value(metrics, "perg_model_http_errors_total", status="429", **at) == 1
    assert value(metrics, "perg_model_http_errors_total", status="400", **at) == 1
    assert value(metrics, "perg_model_timeouts_total", **at) == 1
    assert value(metrics, "perg_model_connection_errors_total", **at) == 1
    assert value(metrics, "perg_model_call_seconds_count", **at) == 1
    assert value(metrics, "perg_model_tokens_sum", direction="in", **at) == 7
    assert value(metrics, "perg_model_tokens_sum", direction="out", **at) == 3


def test_endpoint_labels_are_bounded() -> None:
    metrics = Metrics("judge")
    for port in range(1, MAX_ENDPOINTS + 10):
        metrics.endpoint(f"http://127.0.0.1:{port}/v1").calls_ok.inc()
    metrics.endpoint("http://user@evil/v1").calls_ok.inc()
    text = metrics.exposition().decode()
    labels = {
        s.labels["endpoint"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "perg_model_calls_total"
    }
    assert len(labels) == MAX_ENDPOINTS + 1 and OTHER_ENDPOINT in labels


async def test_ready_follows_the_worker_and_metrics_are_served() -> None:
    metrics = Metrics("sink")
    state = {"ready": False}
    port = free_port()
    runner = await serve(metrics, lambda: state["ready"], "127.0.0.1", port)

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    try:
        assert (await asyncio.to_thread(get, "/ready"))[0] == 503
        state["ready"] = True
        assert (await asyncio.to_thread(get, "/ready"))[0] == 200
        status, body = await asyncio.to_thread(get, "/metrics")
        assert status == 200 and b"perg_messages_in_flight" in body
    finally:
        await runner.cleanup()


async def test_a_busy_port_is_one_clear_error() -> None:
    port = free_port()
    first = await serve(Metrics("judge"), lambda: True, "127.0.0.1", port)
    try:
        with pytest.raises(InputError, match=rf"cannot serve metrics on 127\.0\.0\.1:{port}"):
            await serve(Metrics("judge"), lambda: True, "127.0.0.1", port)
    finally:
        await first.cleanup()
