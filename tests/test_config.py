"""The configuration (issue 21 item 3): one Settings, loaded once by the entry point from the
environment over perg.toml over the defaults, passed down; flags override the Settings, never
the environment; a typo in a config file is refused rather than ignored (issue 22)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from perg.cli import build_parser, main
from perg.cli.worker import worker_settings
from perg.config import KNOWN_SETTINGS, Settings, bootstrap_servers, load_settings
from perg.demo import demo_settings, worker_env
from perg.errors import InputError
from perg.local import free_port

ROOT = Path(__file__).resolve().parent.parent
LOADER = ROOT / "perg" / "config.py"
# Modules that may touch os.environ, and why; none of them for a PERG_ setting.
ENVIRON_USERS = {
    "perg/config.py": "the loader",
    "perg/client/_client.py": "a model's API token, from the variable its endpoint names",
    "perg/cli/submit.py": "checks that a --*-token-env variable is set",
    "perg/demo.py": "the environment of the processes it starts",
    "perg/alerts.py": "GITHUB_STEP_SUMMARY, set by GitHub Actions",
}
PERG_NAMES = {f"PERG_{name.upper()}" for name in KNOWN_SETTINGS}


def modules() -> list[Path]:
    return [
        path
        for package in ("perg", "services", "schemas")
        for path in (ROOT / package).rglob("*.py")
    ]


def environ_uses(tree: ast.AST) -> list[ast.AST]:
    """``os.environ``, ``os.getenv``, ``os.putenv`` and ``from os import environ`` nodes."""
    found: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
            found.append(node)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found.extend(node for alias in node.names if alias.name in ("environ", "getenv"))
    return found


def setting_reads(tree: ast.AST) -> list[str]:
    """PERG_ setting names read from a mapping: ``m["PERG_X"]``, ``m.get("PERG_X")``,
    ``"PERG_X" in m`` (writing one into a child's environment is not a read)."""
    names: list[str] = []
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            key = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if node.func.attr in ("get", "getenv", "setdefault", "pop"):
                key = node.args[0]
        elif isinstance(node, ast.Compare) and any(
            isinstance(op, ast.In | ast.NotIn) for op in node.ops
        ):
            key = node.left
        if isinstance(key, ast.Constant) and key.value in PERG_NAMES:
            names.append(str(key.value))
    return names


def test_no_module_but_the_loader_reads_a_perg_setting_from_the_environment() -> None:
    assert len(modules()) > 50  # the scan sees the packages
    for path in modules():
        name = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), name)
        if environ_uses(tree):
            assert name in ENVIRON_USERS, f"{name} reads os.environ: use its Settings argument"
        if name != "perg/config.py":
            assert not setting_reads(tree), f"{name} reads {setting_reads(tree)}: use Settings"


def test_no_module_changes_its_own_environment() -> None:
    for path in modules():
        name = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), name)):
            changed = (
                isinstance(node, ast.Subscript)
                and isinstance(node.ctx, ast.Store | ast.Del)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "environ"
            ) or (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "environ"
                and node.attr in ("update", "setdefault", "pop", "clear", "__setitem__")
            )
            assert not changed, f"{name}:{getattr(node, 'lineno', '?')} changes os.environ"


def test_the_scans_find_what_they_look_for() -> None:
    code = 'import os\nos.environ["PERG_DB"] = "x"\nv = os.environ.get("PERG_KAFKA")\n'
    tree = ast.parse(code)
    assert environ_uses(tree) and setting_reads(tree) == ["PERG_KAFKA"]
    child = ast.parse('env = {"PERG_KAFKA": "a:1"}\nenv.update(PERG_DB="x")\n')
    assert setting_reads(child) == []


def test_the_loader_reads_every_known_setting_and_only_those() -> None:
    read = set()
    for node in ast.walk(ast.parse(LOADER.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in ("source", "self")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            read.add(node.args[0].value)
    assert read == KNOWN_SETTINGS


def test_every_setting_is_documented() -> None:
    docs = {path: (ROOT / path).read_text() for path in ("perg/config.py", "README.md")}
    for path, text in docs.items():
        missing = sorted(name for name in PERG_NAMES if name not in text)
        assert not missing, f"{path} does not list {missing}"


def write_toml(tmp_path: Path, text: str) -> dict[str, str]:
    (tmp_path / "perg.toml").write_text(text)
    return {"PERG_CONFIG": str(tmp_path / "perg.toml")}


def test_environment_over_file_over_default(tmp_path: Path) -> None:
    env = write_toml(tmp_path, 'kafka = "file:1"\npartitions = 3\nsql_row_cap = 50\n')
    settings = load_settings({**env, "PERG_KAFKA": "env:2", "PERG_SQL_ROW_CAP": ""})
    assert settings.kafka == "env:2"  # the environment wins
    assert settings.partitions == 3  # the file over the default
    assert settings.sql_row_cap == 50  # an empty variable is unset
    assert settings.topic_prefix == Settings().topic_prefix == "perg"  # the default
    assert settings.configured == {"kafka", "partitions", "sql_row_cap"}


def test_every_setting_is_typed(tmp_path: Path) -> None:
    settings = load_settings(
        {
            **write_toml(tmp_path, ""),
            "PERG_SINK_PORT": "9000",
            "PERG_SINK_PUBLIC_HOSTS": " Perg.Example.org , ,b.test",
            "PERG_MODEL_TOKEN_ENVS": "HF_TOKEN@tgi:80, KEY",
            "PERG_WORKER_IN_FLIGHT": "7",
            "PERG_DB_LOCK_WAIT_S": "1.5",
            "PERG_METRICS_PORT": "0",
            "PERG_REPLICATION": "2",
            "PERG_DATA_DIR": str(tmp_path),
        }
    )
    assert settings.sink_url == "http://127.0.0.1:9000"  # follows the port unless set
    assert settings.sink_public_hosts == {"perg.example.org", "b.test"}
    assert settings.model_token_envs == ("HF_TOKEN@tgi:80", "KEY")
    assert (settings.worker_in_flight, settings.worker_instance) == (7, None)
    assert (settings.db_lock_wait_s, settings.metrics_port, settings.replication) == (1.5, None, 2)
    assert settings.data_dir == tmp_path


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SQL_TIMEOUT_S", "0", "PERG_SQL_TIMEOUT_S must be more than 0 seconds"),
        ("SQL_ROW_CAP", "many", "PERG_SQL_ROW_CAP='many' is not a whole number"),
        ("SNAPSHOT_EVERY_S", "inf", "PERG_SNAPSHOT_EVERY_S='inf' must be a finite number"),
        ("DB_LOCK_WAIT_S", "-1", "PERG_DB_LOCK_WAIT_S='-1' must be a finite number"),
        ("WORKER_IN_FLIGHT", "0", "PERG_WORKER_IN_FLIGHT=0 must be at least 1"),
        ("SINK_PORT", "70000", "PERG_SINK_PORT=70000 is not a port"),
        ("KAFKA", "h::::", "PERG_KAFKA='h::::': 'h::::' is not HOST:PORT"),
        ("MODEL_MAX_RETRIES", "-1", "PERG_MODEL_MAX_RETRIES=-1 must be at least 0"),
        (
            "MODEL_MIN_TOKENS_PER_S",
            "fast",
            "PERG_MODEL_MIN_TOKENS_PER_S='fast' is not a number of tokens/s",
        ),
        ("MODEL_TIMEOUT_S", "0", "PERG_MODEL_TIMEOUT_S must be more than 0 seconds"),
    ],
)
def test_bad_values_name_the_variable(tmp_path: Path, name: str, value: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        load_settings({**write_toml(tmp_path, ""), f"PERG_{name}": value})


def test_a_file_value_is_validated_like_a_variable(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="PERG_PARTITIONS=0 must be at least 1"):
        load_settings(write_toml(tmp_path, "partitions = 0\n"))


def test_worker_flags_override_the_settings_not_the_environment(tmp_path: Path) -> None:
    env = {**write_toml(tmp_path, 'db = "file.duckdb"\n'), "PERG_KAFKA": "env:1"}
    settings = load_settings({**env, "PERG_WORKER_INSTANCE": "env-0"})
    before = dict(os.environ)
    args = build_parser("worker").parse_args(
        ["worker", "sink", "--bootstrap", "flag:2", "--db", "flag.duckdb", "--in-flight", "3"]
    )
    flagged = worker_settings(args, settings)
    assert (flagged.kafka, flagged.db, flagged.worker_in_flight) == (
        "flag:2",
        Path("flag.duckdb"),
        3,
    )
    assert flagged.worker_instance == "env-0"  # no flag: the setting stands
    assert dict(os.environ) == before


def test_worker_flag_is_validated() -> None:
    args = build_parser("worker").parse_args(["worker", "sink", "--bootstrap", "me@h:1"])
    with pytest.raises(InputError, match="--bootstrap='me@h:1'"):
        worker_settings(args, Settings())


def submit_argv(tmp_path: Path) -> list[str]:
    rows = tmp_path / "one.jsonl"
    rows.write_text(
        '{"question": "Which is a fruit?", "options": ["apple", "stone"], "gold_option": "A", '
        '"gold_answer": "apple", "category": "", "source": "tau/commonsense_qa", '
        '"preference": "I prefer concise answers."}\n'
    )
    endpoints = ["--model-url", "http://127.0.0.1:9/v1", "--model", "m", "--judge-url"]
    endpoints += ["http://127.0.0.1:9/v1", "--judge-model", "j", "--dataset", str(rows)]
    return ["submit", *endpoints, "--settings", "relevant", "--methods", "zero-shot"]


def test_submit_reaches_the_broker_of_the_flag_over_the_environment_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file_, env, flag = (f"127.0.0.1:{free_port()}" for _ in range(3))  # nothing listens
    monkeypatch.setenv("PERG_CONFIG", write_toml(tmp_path, f'kafka = "{file_}"\n')["PERG_CONFIG"])
    monkeypatch.delenv("PERG_KAFKA", raising=False)

    def reached(*flags: str) -> str:
        assert main([*submit_argv(tmp_path), *flags]) == 3
        err = capsys.readouterr().err
        assert err.startswith("perg submit: cannot reach Kafka at "), err
        return err.split(" at ", 1)[1].split(" (", 1)[0]

    assert reached() == file_
    monkeypatch.setenv("PERG_KAFKA", env)
    assert reached() == env
    assert reached("--bootstrap", flag) == flag
    assert os.environ["PERG_KAFKA"] == env  # the flag did not become the environment


def test_the_demo_hands_its_settings_to_its_workers_through_their_environment(
    tmp_path: Path,
) -> None:
    env = write_toml(tmp_path, 'topic_prefix = "mine"\n')
    demo = demo_settings(load_settings(env), tmp_path, "127.0.0.1:1234", 5555)
    assert (demo.db, demo.topic_prefix) == (tmp_path / "perg.duckdb", "mine")  # "mine" is set
    assert demo.sink_url == "http://127.0.0.1:5555"
    assert load_settings({**env, **worker_env(demo)}) == demo  # what each worker loads


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
