"""The configuration: every setting the code reads is a known perg.toml key, so a typo in a
config file is refused rather than ignored (issue 22)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from perg.config import KNOWN_SETTINGS, bootstrap_servers
from perg.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def settings_read_in_code() -> set[str]:
    names = set()
    for package in ("perg", "services", "schemas"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id.endswith("setting")  # setting, int_setting, ...
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    names.add(str(node.args[0].value))
    return names


def test_every_setting_the_code_reads_is_known() -> None:
    read = settings_read_in_code()
    assert "kafka" in read and "sql_row_cap" in read  # the scan finds the readers
    assert read <= KNOWN_SETTINGS, f"add to KNOWN_SETTINGS: {sorted(read - KNOWN_SETTINGS)}"


@pytest.mark.parametrize(
    "value", ["127.0.0.1:9092", "a:1,b:2", "[::1]:9092", "broker", " a:1 , b:2"]
)
def test_bootstrap_servers_accepts_what_kafka_clients_take(value: str) -> None:
    assert bootstrap_servers(value) == value


@pytest.mark.parametrize(
    "value", ["", "h::::", "::1:9092", "h:0", "h:x", "h:99999", "a:1,", "me@h:1", "h:1/x"]
)
def test_bootstrap_servers_refuses_what_is_no_host_port(value: str) -> None:
    with pytest.raises(InputError, match=r"--bootstrap=.* is not HOST:PORT"):
        bootstrap_servers(value, "--bootstrap")
