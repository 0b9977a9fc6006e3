"""Whoever writes to the runs topic cannot make a worker reach a host off its allow-list
(PERG_MODEL_HOSTS): an attacker's corpus of URLs, the patterns, the refusal as a permanent
dead letter with no call made, and redirects not followed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from fixtures.live.runs import item

from perg.client import ClientTuning, Endpoint, ModelClient, ModelError
from perg.config import load_settings
from perg.errors import InputError
from perg.hosts import DEFAULT_MODEL_HOSTS, HostNotAllowed, ModelHosts, parse_url_host
from perg.protocol import CallKind, load_protocol
from schemas import RunContext
from services._calls import ModelCaller, check_hosts
from services._runtime import PermanentError

ITEM = item(0)

COMPOSE = ModelHosts.parse("loopback,llama-model:8080,*.models.internal,10.0.0.*:8000")

ALLOWED = [
    ("http://127.0.0.1:8080/v1", "127.0.0.1:8080"),
    ("http://127.3.4.5/v1", "127.3.4.5:80"),
    ("https://localhost/v1", "localhost:443"),
    ("http://LOCALHOST./v1", "localhost:80"),
    ("HTTP://127.0.0.1/v1", "127.0.0.1:80"),
    ("http://[::1]:8080/v1", "[::1]:8080"),
    ("http://[0:0:0:0:0:0:0:1]/v1", "[::1]:80"),
    ("http://[::ffff:127.0.0.1]/v1", "127.0.0.1:80"),
    ("http://llama-model:8080/v1", "llama-model:8080"),
    ("http://Gpu-3.Models.Internal/v1", "gpu-3.models.internal:80"),
    ("http://10.0.0.5:8000/v1", "10.0.0.5:8000"),
]

# Each names, or tries to smuggle, a host the list does not allow (or cannot be read for sure).
ATTACKS = [
    "http://169.254.169.254/latest/meta-data",  # cloud metadata
    "http://[::ffff:169.254.169.254]/",  # the same, IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/",
    "http://2852039166/",  # 169.254.169.254 in decimal
    "http://2130706433/v1",  # 127.0.0.1 in decimal: not a dotted quad, refused even so
    "http://0x7f000001/v1",
    "http://0x7f.1/v1",
    "http://0177.0.0.1/v1",  # octal
    "http://127.1/v1",
    "http://0/v1",
    "http://0.0.0.0:8080/v1",  # reaches this host's services on Linux
    "http://[::]/v1",
    "http://127.0.0.1@evil.example/v1",  # user info
    "http://llama-model:8080@evil.example/v1",
    "http://evil.example#@127.0.0.1/v1",
    "http://evil.example?@127.0.0.1/v1",
    "http://evil.example\\@127.0.0.1/v1",
    "http://127.0.0.1\\@evil.example/v1",
    "http://%6c%6fcalhost/v1",  # percent-encoded
    "http://127.0.0.1%2f@evil.example/",
    "http://\u24dbocalhost/v1",  # ⓛ: IDNA maps it to "l"
    "http://\u212aocalhost/",  # Kelvin sign lower-cases to ASCII "k"
    "http://l\u043ecalhost/v1",  # Cyrillic o
    "http://localhost\u3002evil.example/",  # ideographic full stop
    "http://127.0.0.1 /v1",
    "http://127.0.0.1\t/v1",
    "http://127.0.0.1\n.evil.example/v1",
    "http://[::1%25eth0]/v1",  # zone
    "http://::1/v1",  # IPv6 without brackets
    "http://[::1/v1",
    "http://127.0.0.1:8080:80/v1",
    "http://127.0.0.1:0/v1",
    "http://127.0.0.1:65536/v1",
    "http://127.0.0.1:+80/v1",
    "http://127.0.0.1:8_0/v1",
    "http://127.0.0.1:\u0668\u0660/v1",  # Arabic-Indic digits
    "http://127.0.0.1../v1",
    "http://.127.0.0.1/v1",
    "http:///v1",
    "http:/127.0.0.1/v1",
    "//127.0.0.1/v1",
    "gopher://127.0.0.1:11211/",
    "file:///etc/passwd",
    "ftp://127.0.0.1/",
    "unix:///var/run/docker.sock",
    "http://localhost.evil.example/v1",
    "http://evil-localhost/v1",
    "http://llama-model:8081/v1",  # right host, wrong port
    "http://llama-model.evil.example:8080/v1",
    "http://a.b.models.internal/v1",  # '*' stays within one label
    "http://models.internal/v1",
    "http://10.0.0.5.nip.io:8000/v1",
    "http://10.0.0.5:8001/v1",
    "http://10.0.1.5:8000/v1",
    "http://[fe80::1]/v1",
    "http://[fd00::1]:8080/v1",
]


@pytest.mark.parametrize(("url", "host"), ALLOWED)
def test_allowed_urls_read_canonically(url: str, host: str) -> None:
    assert str(COMPOSE.check(url)) == host


@pytest.mark.parametrize("url", ATTACKS)
def test_attacks_are_refused_with_one_clear_line(url: str) -> None:
    with pytest.raises(HostNotAllowed) as refused:
        COMPOSE.check(url)
    message = str(refused.value)
    assert "\n" not in message and len(message) < 600


def test_the_default_is_loopback_only() -> None:
    default = ModelHosts.parse(DEFAULT_MODEL_HOSTS)
    default.check("http://127.0.0.1:9/v1")
    default.check("http://[::1]:9/v1")
    for url in ("http://llama-model:8080/v1", "http://10.0.0.5/v1", "http://example.org/v1"):
        with pytest.raises(HostNotAllowed, match="PERG_MODEL_HOSTS allows loopback"):
            default.check(url)


def test_settings_load_the_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERG_MODEL_HOSTS", raising=False)
    assert str(load_settings().model_hosts) == "loopback"
    monkeypatch.setenv("PERG_MODEL_HOSTS", "tgi-model:80, *.gpu.internal")
    hosts = load_settings().model_hosts
    hosts.check("http://tgi-model/v1")
    with pytest.raises(HostNotAllowed):
        hosts.check("http://127.0.0.1/v1")


@pytest.mark.parametrize(
    "pattern", ["host:port", "a b", "[::1", "[zz::1]", "ho/st", "h:0", "h:99999", "*x*:a", "é.org"]
)
def test_bad_patterns_name_the_setting(pattern: str) -> None:
    with pytest.raises(InputError, match=r"PERG_MODEL_HOSTS: pattern"):
        ModelHosts.parse(f"loopback,{pattern}")


def test_a_lone_star_allows_any_host_but_never_an_unreadable_url() -> None:
    anything = ModelHosts.parse("*")
    anything.check("http://169.254.169.254/")
    with pytest.raises(HostNotAllowed):
        anything.check("http://127.0.0.1@evil.example/")
    with pytest.raises(HostNotAllowed):
        anything.check("http://0x7f.1/")


def test_ipv6_patterns() -> None:
    hosts = ModelHosts.parse("[fd00::10]:8080")
    hosts.check("http://[fd00:0::10]:8080/v1")
    with pytest.raises(HostNotAllowed):
        hosts.check("http://[fd00::11]:8080/v1")


def test_parse_agrees_with_the_http_client() -> None:
    """yarl (aiohttp's parser) reads every allowed URL as the same host and port."""
    from yarl import URL

    for url, host in ALLOWED:
        parsed = parse_url_host(url)
        assert str(parsed) == host
        assert URL(url).port == parsed.port


def _context(model_url: str, judge_url: str) -> RunContext:
    return RunContext(
        run_id="run-x",
        model=Endpoint(model_url, "m"),
        judge=Endpoint(judge_url, "j"),
        protocol="paper",
        protocol_sha256="0",
    )


def test_a_run_naming_any_disallowed_endpoint_is_refused_as_permanent() -> None:
    hosts = ModelHosts.parse("loopback")
    check_hosts(hosts, _context("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"))
    with pytest.raises(PermanentError, match=r"run run-x: model host 10\.1\.2\.3:80"):
        check_hosts(hosts, _context("http://127.0.0.1:1/v1", "http://10.1.2.3/v1"))


async def test_a_refused_run_makes_no_call() -> None:
    """As the workers' handler does: the hosts are checked before the run's first call."""
    from perg.client import ClientPool, MockTransport, TransportRequest, TransportResponse

    sent: list[str] = []

    def handler(request: TransportRequest) -> TransportResponse:
        sent.append(request.url)
        return TransportResponse(500, b"")

    pool = ClientPool(transport=lambda e: MockTransport(handler))
    context = _context("http://127.0.0.1:1/v1", "http://internal-admin:80/v1")
    with pytest.raises(PermanentError):
        check_hosts(ModelHosts.parse("loopback"), context)
        await ModelCaller(pool, context, load_protocol("paper")).call(CallKind.ANSWER, ITEM, [])
    assert sent == []


@pytest.fixture
async def redirecting() -> AsyncIterator[tuple[str, list[str]]]:
    """A server whose chat endpoint redirects elsewhere (307 keeps the POST) and counts hits on
    the redirect's target."""
    hits: list[str] = []

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/elsewhere/chat/completions")

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"choices": [{"message": {"content": "x"}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", redirect)
    app.router.add_post("/elsewhere/chat/completions", elsewhere)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1", hits
    finally:
        await runner.cleanup()


async def test_redirects_are_not_followed(redirecting: tuple[str, list[str]]) -> None:
    url, hits = redirecting
    async with ModelClient(Endpoint(url, "m"), tuning=ClientTuning(max_retries=0)) as client:
        with pytest.raises(ModelError, match="HTTP 307") as failed:
            await client.chat([{"role": "user", "content": "hi"}], max_tokens=1)
    assert failed.value.status == 307 and hits == []


async def test_a_redirect_is_a_permanent_failure(redirecting: tuple[str, list[str]]) -> None:
    from perg.client import ClientPool

    url, hits = redirecting
    context = _context(url, url)
    async with ClientPool() as pool:
        caller = ModelCaller(pool, context, load_protocol("paper"))
        with pytest.raises(PermanentError, match="307"):
            await caller.call(CallKind.ANSWER, ITEM, [], label="baseline")
    assert hits == []
