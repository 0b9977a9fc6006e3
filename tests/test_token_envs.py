"""A run cannot make a worker send an arbitrary environment variable to an arbitrary URL: token
variables come only from the worker's allow-list, PERG_MODEL_TOKEN_ENVS (optionally per host)."""

from __future__ import annotations

import pytest

from perg.client import Endpoint, ModelClient, ModelError, TokenNotAllowed, check_token_env
from perg.config import load_settings

SECRET = "hf_not-a-real-secret-but-must-not-leak"


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("MODEL_KEY", "model-key")


def allowed(setting: str | None) -> tuple[str, ...]:
    """The allow-list a worker loads from ``PERG_MODEL_TOKEN_ENVS=setting`` (None: unset)."""
    env = {} if setting is None else {"PERG_MODEL_TOKEN_ENVS": setting}
    return load_settings(env).model_token_envs


def _client(url: str, env: str, allow: str | None) -> ModelClient:
    return ModelClient(Endpoint(url, "m", api_key_env=env), token_envs=allowed(allow))


@pytest.mark.parametrize("allow", [None, "", " , "])
def test_no_token_variable_without_an_allow_list(allow: str | None) -> None:
    with pytest.raises(TokenNotAllowed, match=r"'HF_TOKEN'.*no token variables") as refused:
        _client("https://attacker.example/v1", "HF_TOKEN", allow)
    assert SECRET not in str(refused.value)
    assert isinstance(refused.value, ModelError)  # still a ModelError for older callers


def test_only_listed_names() -> None:
    client = _client("https://models.example/v1", "MODEL_KEY", "MODEL_KEY")
    assert client._headers["Authorization"] == "Bearer model-key"
    with pytest.raises(TokenNotAllowed, match=r"HF_TOKEN.*allows MODEL_KEY"):
        _client("https://models.example/v1", "HF_TOKEN", "MODEL_KEY")


@pytest.mark.parametrize(
    ("url", "allowed_there"),
    [
        ("https://models.example/v1", True),
        ("https://MODELS.example:443/v1", True),
        ("http://models.example/v1", False),  # the binding says port 443
        ("https://models.example.attacker.test/v1", False),
        ("https://attacker.test/v1?x=models.example", False),
        ("https://models.example@attacker.test/v1", False),
        ("http://10.0.0.5:8080/v1", True),
        ("http://10.0.0.5:8081/v1", False),
    ],
)
def test_names_bound_to_hosts(url: str, allowed_there: bool) -> None:
    allow = allowed("MODEL_KEY@models.example:443, MODEL_KEY@10.0.0.5:8080")
    if allowed_there:
        check_token_env("MODEL_KEY", url, allow)
    else:
        with pytest.raises(TokenNotAllowed, match="MODEL_KEY"):
            check_token_env("MODEL_KEY", url, allow)


def test_host_without_port_allows_any_port() -> None:
    allow = allowed("MODEL_KEY@tgi.internal")
    check_token_env("MODEL_KEY", "http://tgi.internal:8080/v1", allow)
    with pytest.raises(TokenNotAllowed):
        check_token_env("MODEL_KEY", "http://tgi.internal.evil:8080/v1", allow)
