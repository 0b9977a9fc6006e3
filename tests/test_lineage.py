"""Lineages, acceptances, cancellations and the work's order: records, store views, the
commands' refusals (no broker needed: every refusal comes before anything is published)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from fixtures.live.runs import fails, item, make_spec, verdicts, write_run

from perg.cli import main
from perg.client import ClientPool, ClientTuning, Endpoint
from perg.config import default_data_dir, load_settings
from perg.dataset import SOURCES
from perg.errors import InputError
from perg.lineage import accept_run, accepted_reference, lineage_history, run_state
from perg.protocol import CallKind, load_protocol
from perg.runs import RunRequest, plan_run, shuffle_within_strata
from schemas import Acceptance, GateDecision, RunCancel, RunContext, RunSpec, SchemaError
from services._calls import ModelCaller
from services._runtime import RunCancelled
from services.sink.live.engine import open_read_only
from services.sink.live.query import QueryLimits, StoreReader
from services.sink.store import ResultStore, run_statuses

ITEM = item(0)

ROWS = 60
DATA = default_data_dir()
METHODS = ("zero_shot",)


def now() -> str:
    return datetime.now(UTC).isoformat()


def lineage_spec(run_id: str, version: str, rows: int = ROWS) -> RunSpec:
    spec = make_spec(run_id, rows, methods=METHODS)
    return dataclasses.replace(spec, lineage="chat-prod", version_label=version, shuffle_seed=3)


# -- records ----------------------------------------------------------------------------------


def test_a_run_spec_without_the_new_fields_still_decodes() -> None:
    spec = make_spec("old", 3)
    data = orjson.loads(spec.encode())
    for name in ("lineage", "version_label", "shuffle_seed"):
        del data[name]
    decoded = RunSpec.decode(orjson.dumps(data))
    assert (decoded.lineage, decoded.version_label, decoded.shuffle_seed) == (None, None, None)
    assert decoded == spec


def test_lineage_records_round_trip_and_names_are_checked() -> None:
    spec = lineage_spec("r1", "v1.2_rc-3")
    assert RunSpec.decode(spec.encode()) == spec
    for record in (
        RunCancel(run_id="r1", cancelled_at=now(), reason="perg cancel"),
        Acceptance(run_id="r1", lineage="chat-prod", accepted_at=now(), note="ok"),
        GateDecision("r2", "r1", True, now(), lineage="chat-prod", summary="PASS"),
    ):
        assert type(record).decode(record.encode()) == record
    for bad in ("", "a b", "x" * 65, "naïve", "a/b", "a;drop"):
        with pytest.raises(SchemaError, match="lineage"):
            RunSpec.decode(dataclasses.replace(spec, lineage=bad).encode())
    assert RunSpec.decode(dataclasses.replace(spec, lineage="x" * 64).encode()).lineage


# -- the work's order --------------------------------------------------------------------------


def test_shuffle_within_strata_is_seeded_and_every_prefix_is_stratified() -> None:
    items = [item(i) for i in range(90)] + [
        dataclasses.replace(item(1000 + i), source=SOURCES[0]) for i in range(30)
    ]
    order = shuffle_within_strata(items, 7)
    assert sorted(i.row_id for i in order) == sorted(i.row_id for i in items)
    assert [i.row_id for i in shuffle_within_strata(items, 7)] == [i.row_id for i in order]
    assert [i.row_id for i in shuffle_within_strata(items, 8)] != [i.row_id for i in order]
    share = {s: n / len(items) for s, n in Counter(i.source for i in items).items()}
    for k in range(1, len(order) + 1):
        seen = Counter(i.source for i in order[:k])
        for source, p in share.items():
            assert abs(seen[source] - p * k) < 1, (k, source)
    # within a source the order is random, not the dataset's
    first = [i.row_id for i in order if i.source == SOURCES[1]]
    assert first != sorted(first)


@pytest.mark.skipif(not (DATA / "pergdata.csv").is_file(), reason="shared PERG data not found")
def test_plan_run_records_the_seed_and_publishes_in_that_order() -> None:
    data = DATA
    endpoint = Endpoint("http://127.0.0.1:9/v1", "m")
    request = RunRequest(model=endpoint, judge=endpoint, sample=30, seed=4, lineage="l",
                         version="v1", dataset_path=data / "pergdata.csv")  # fmt: skip
    spec, work = plan_run(request, load_settings())
    assert spec.shuffle_seed == 4 and (spec.lineage, spec.version_label) == ("l", "v1")
    assert spec.row_ids == [w.item.row_id for w in work]
    assert spec.row_ids != sorted(spec.row_ids)
    again, _ = plan_run(dataclasses.replace(request, shuffle_seed=5), load_settings())
    assert sorted(again.row_ids) == sorted(spec.row_ids) and again.row_ids != spec.row_ids
    with pytest.raises(InputError, match="--lineage"):
        plan_run(dataclasses.replace(request, lineage="two words"), load_settings())
    with pytest.raises(InputError, match="--version"):
        plan_run(dataclasses.replace(request, version="v" * 65), load_settings())


def test_submit_refuses_a_bad_lineage_name_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["submit", "--model-url", "http://127.0.0.1:9/v1", "--model", "m",
                 "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "j",
                 "--lineage", "chat prod"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--lineage" in err and "'chat prod'" in err


# -- the store ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """chat-prod: v1 (done, accepted), v2 (done, gated: fail), v3 (cancelled at 20 of 60
    rows); a run without a lineage."""
    path = tmp_path_factory.mktemp("lineage") / "perg.duckdb"
    store = ResultStore(path)
    base_wrong = fails("nopref", 20, per_cell=False)
    write_run(store, lineage_spec("v1-run", "v1"), base_wrong=base_wrong,
              pref_wrong=fails("pref", 10))  # fmt: skip
    write_run(store, lineage_spec("v2-run", "v2"), base_wrong=base_wrong,
              pref_wrong=fails("pref", 30))  # fmt: skip
    partial = lineage_spec("v3-run", "v3")
    store.save_run(partial)
    store.save_verdicts(verdicts(partial, range(20), base_wrong=base_wrong))
    store.save_cancels([RunCancel(run_id="v3-run", cancelled_at=now(), reason="test")])
    write_run(store, make_spec("loose", 10, methods=METHODS))
    store.save_acceptances([Acceptance(run_id="v1-run", lineage="chat-prod",
                                       accepted_at=now(), note="first")])  # fmt: skip
    store.save_gate_decisions([GateDecision("v2-run", "v1-run", False, now(),
                                            lineage="chat-prod", summary="FAIL")])  # fmt: skip
    store.close()
    return path


@pytest.fixture
def reader(db: Path) -> StoreReader:
    return StoreReader(open_read_only(db), QueryLimits())


def test_status_and_run_states_say_cancelled_with_the_counts(db: Path, reader: StoreReader) -> None:
    con = open_read_only(db)
    statuses = {s.run_id: s for s in run_statuses(con)}
    cancelled = statuses["v3-run"]
    assert cancelled.as_dict()["state"] == "cancelled" and cancelled.as_dict()["partial"]
    assert (cancelled.results_stored, cancelled.expected_results) == (20 * 2, ROWS * 2)
    assert (cancelled.lineage, cancelled.version) == ("chat-prod", "v3")
    assert statuses["v1-run"].state == "done" and statuses["loose"].lineage is None
    state = run_state(reader, "v3-run")
    assert state is not None
    assert (state["state"], state["partial"], state["results_stored"]) == ("cancelled", True, 40)
    assert state["shuffle_seed"] == 3
    assert run_state(reader, "nope") is None
    # the partial results stay queryable
    rows = reader.sql("SELECT count(*) FROM results WHERE run_id = 'v3-run'")["rows"]
    assert rows == [[40]]


def test_history_view_in_order_with_metrics_verdicts_and_acceptances(reader: StoreReader) -> None:
    rows = lineage_history(reader, "chat-prod")
    assert [r["run_id"] for r in rows] == ["v1-run", "v2-run", "v3-run"]
    assert [r["position"] for r in rows] == [1, 2, 3]
    assert [r["version"] for r in rows] == ["v1", "v2", "v3"]
    assert [r["accepted"] for r in rows] == [True, False, False]
    assert [r["verdict"] for r in rows] == [None, "fail", None]
    assert rows[1]["reference_run_id"] == "v1-run"
    assert [r["state"] for r in rows] == ["done", "done", "cancelled"]
    v1, v2 = rows[0], rows[1]
    qstar = sum(1 for r in range(ROWS) if not fails("nopref", 20, per_cell=False)(r, "", ""))
    assert v1["n_qstar"] == qstar
    assert v1["BR"] < v2["BR"]
    for r in (v1, v2):
        assert r["BR_lo"] <= r["BR"] <= r["BR_hi"] and r["RER_lo"] <= r["RER"] <= r["RER_hi"]
        assert r["noise_BR"] is None
    # BR over both cells (relevant, irrelevant) of zero_shot, as counted from the outcomes
    broken = reader.sql(
        "SELECT count(*) FILTER (NOT pref_correct), count(*) FROM perg_row_outcomes "
        "WHERE run_id = 'v2-run' AND base_correct"
    )["rows"][0]
    assert v2["BR"] == pytest.approx(100 * broken[0] / broken[1])


def test_reference_is_the_latest_acceptance_and_refusals(reader: StoreReader) -> None:
    assert accepted_reference(reader, "chat-prod") == "v1-run"
    with pytest.raises(InputError, match="unknown lineage 'nope'"):
        accepted_reference(reader, "nope")
    with pytest.raises(InputError, match="not a valid name"):
        lineage_history(reader, "bad name")
    settings = None  # every refusal comes before publishing
    with pytest.raises(InputError, match="unknown run 'nope'"):
        accept_run(settings, reader, "nope")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"cancelled \(40/120 results stored\)"):
        accept_run(settings, reader, "v3-run")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="has no lineage"):
        accept_run(settings, reader, "loose")  # type: ignore[arg-type]


def test_a_lineage_without_acceptance_is_refused(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "perg.duckdb")
    write_run(store, lineage_spec("only", "v1", rows=5))
    running = lineage_spec("running", "v2", rows=5)
    store.save_run(running)
    store.close()
    reader = StoreReader(open_read_only(tmp_path / "perg.duckdb"), QueryLimits())
    with pytest.raises(InputError, match="lineage 'chat-prod' has no accepted run"):
        accepted_reference(reader, "chat-prod")
    with pytest.raises(InputError, match=r"incomplete \(0/10 results stored\)"):
        accept_run(None, reader, "running")  # type: ignore[arg-type]


# -- the commands, on the results file (no sink, no broker) -----------------------------------


@pytest.fixture
def offline(db: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PERG_DB", str(db))
    monkeypatch.setenv("PERG_SINK_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("PERG_KAFKA", "127.0.0.1:9")
    return db


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["history", "nope"], "unknown lineage 'nope'"),
        (["history", "a b"], "not a valid name"),
        (["gate", "--lineage", "nope", "v2-run"], "unknown lineage 'nope'"),
        (["gate", "--lineage", "chat-prod", "v1-run", "v2-run"], "only the CANDIDATE"),
        (["gate", "v2-run"], "REFERENCE CANDIDATE"),
        (["accept", "v3-run"], "cancelled"),
        (["accept", "nope"], "unknown run 'nope'"),
        (["cancel", "nope"], "unknown run 'nope'"),
        (["accept", "v1-run", "--note", "x" * 2001], "--note: at most 2000 characters"),
        (["cancel", "v3-run", "--reason", "x" * 2001], "--reason: at most 2000 characters"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    offline: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("perg: no sink answers")]
    assert code == 2, err
    assert len(lines) == 1 and message in lines[0], err


def test_history_prints_and_json(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "chat-prod", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in rows] == ["v1-run", "v2-run", "v3-run"]
    assert main(["history", "chat-prod"]) == 0
    out = capsys.readouterr().out
    assert "fail vs v1-run" in out and "cancelled" in out and "v3" in out


def test_gate_against_the_lineage_keeps_its_verdict_when_kafka_is_away(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["gate", "--lineage", "chat-prod", "v2-run", "--max-br-increase", "5", "--json"])
    captured = capsys.readouterr()
    verdict = json.loads(captured.out)
    assert verdict["reference"]["run_id"] == "v1-run" and verdict["candidate"]["run_id"] == "v2-run"
    assert code == 1 and not verdict["passed"]
    assert "not recorded for perg history" in captured.err


def test_status_shows_cancelled_and_lineage(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "cancelled (partial)" in out and "chat-prod" in out


def test_unreachable_everything_is_exit_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PERG_DB", str(tmp_path / "none.duckdb"))
    monkeypatch.setenv("PERG_SINK_URL", "http://127.0.0.1:9")
    for argv in (["cancel", "r"], ["accept", "r"], ["history", "chat-prod"]):
        assert main(argv) == 3
        assert capsys.readouterr().err.count("\n") == 1


# -- the model caller ---------------------------------------------------------------------------


async def test_the_model_caller_makes_no_call_for_a_cancelled_run() -> None:
    endpoint = Endpoint("http://127.0.0.1:9/v1", "m")
    context = RunContext(
        run_id="r", model=endpoint, judge=endpoint, protocol="paper", protocol_sha256="x"
    )
    cancelled: set[str] = set()
    caller = ModelCaller(ClientPool(), context, load_protocol("paper"), cancelled.__contains__)
    cancelled.add("r")
    with pytest.raises(RunCancelled, match="cancelled before its answer call"):
        await caller.call(CallKind.ANSWER, ITEM, [{"role": "user", "content": "hi"}])


async def test_a_call_queued_for_a_slot_is_withdrawn_when_its_run_is_cancelled() -> None:
    """One slot: the first call is on the wire when the run is cancelled and completes; the
    second, waiting for the slot, is never sent."""
    from model_double import ScriptedModelServer, ScriptedReply

    async with ScriptedModelServer(lambda _: ScriptedReply("ok", delay_s=0.5)) as server:
        endpoint = Endpoint(server.base_url, "m")
        context = RunContext(
            run_id="r", model=endpoint, judge=endpoint, protocol="paper", protocol_sha256="x"
        )
        cancelled: set[str] = set()
        async with ClientPool(tuning=ClientTuning(max_in_flight=1)) as pool:
            caller = ModelCaller(pool, context, load_protocol("paper"), cancelled.__contains__)
            messages = [{"role": "user", "content": "hi"}]
            first = asyncio.create_task(caller.call(CallKind.ANSWER, ITEM, messages))
            second = asyncio.create_task(caller.call(CallKind.ANSWER, ITEM, messages))
            while not server.stats["received"]:
                await asyncio.sleep(0.01)
            cancelled.add("r")
            completion, _ = await first
            assert completion.text == "ok"
            with pytest.raises(RunCancelled):
                await second
        assert server.stats["received"] == 1


def test_status_wait_stops_at_a_cancelled_run(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "v3-run", "--wait", "--timeout", "60"]) == 1
    err = capsys.readouterr().err
    assert "run cancelled; 40/120 results stored (partial)" in err
