"""The topic contracts: round trips, strict validation, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from perg.client import Endpoint
from perg.config import load_settings
from perg.dataset import DatasetError, Item
from perg.runs import RunRequest, plan_run
from schemas import (
    AlignRequest,
    CallRecord,
    DeadLetter,
    Generation,
    RunContext,
    SchemaError,
    Verdict,
    WorkItem,
)

ENDPOINT = Endpoint("http://127.0.0.1:1/v1", "m", "tgi", "TOKEN_ENV")
CONTEXT = RunContext(
    run_id="run-1", model=ENDPOINT, judge=ENDPOINT, protocol="paper", protocol_sha256="abc"
)
ITEM = Item(7, "Q?", ("yes", "no"), "A", "yes", "", "tau/commonsense_qa", "P")


def generation() -> Generation:
    call = CallRecord(
        stage="answer", latency_s=0.5, attempts=2, tokens_in=10, tokens_out=3, finish_reason="stop"
    )
    return Generation(
        context=CONTEXT,
        item=ITEM,
        setting="mixed",
        method="self_critic",
        stage="critique",
        response="The answer is A.",
        baseline_response="A.",
        calls=[call],
        parse_fallback=True,
    )


def test_records_round_trip_with_nested_records_and_tuples() -> None:
    g = generation()
    assert Generation.decode(g.encode()) == g
    verdict = Verdict(
        generation=g,
        answer="A",
        extraction="parsed",
        judge_rating=4,
        judge_outcome="followed",
        judge_raw="<answer>4</answer>",
        calls=[],
    )
    assert Verdict.decode(verdict.encode()) == verdict
    assert verdict.key == ("run-1", 7, "mixed", "self_critic", "verdict")
    work = WorkItem(context=CONTEXT, item=ITEM, settings=["relevant"], methods=["zero_shot"])
    assert WorkItem.decode(work.encode()).item.options == ("yes", "no")


def test_the_endpoint_carries_the_token_variable_name_never_a_token() -> None:
    body = orjson.loads(generation().encode())
    assert body["context"]["model"]["api_key_env"] == "TOKEN_ENV"
    assert body["schema"] == "perg.generation" and body["version"] == 1


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("item"), "perg.generation.item: missing"),
        (lambda d: d.update(setting="sideways"), "perg.generation.setting: 'sideways'"),
        (lambda d: d["item"].update(row_id="7"), "perg.generation.item.row_id: expected int"),
        (lambda d: d["item"].update(row_id=True), "expected an integer, got a boolean"),
        (lambda d: d.update(version=2), "unsupported version 2"),
        (lambda d: d.update(schema="perg.verdict"), "declares schema 'perg.verdict'"),
        (lambda d: d["calls"][0].update(latency_s="fast"), "calls[0].latency_s: expected a number"),
    ],
)
def test_decoding_names_the_field_that_is_wrong(mutate: object, message: str) -> None:
    body = orjson.loads(generation().encode())
    mutate(body)  # type: ignore[operator]
    with pytest.raises(SchemaError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Generation.decode(orjson.dumps(body))


def test_unknown_fields_of_the_same_version_are_ignored() -> None:
    """A newer release's optional fields: an old reader decodes the rest."""
    body = orjson.loads(generation().encode())
    body["reviewed_by"] = {"anything": [1, 2]}
    body["context"]["model"]["max_in_flight"] = 64  # release 0.1.0's client tuning
    body["calls"][0]["cache_hit"] = True
    assert Generation.decode(orjson.dumps(body)) == generation()


def test_the_contracts_import_nothing_from_perg() -> None:
    code = (
        "import sys, schemas, schemas.topics; "
        "print(sorted(m for m in sys.modules if m == 'perg' or m.startswith('perg.')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]", b"null"])
def test_garbage_is_a_schema_error(raw: bytes) -> None:
    with pytest.raises(SchemaError):
        DeadLetter.decode(raw)


def test_plan_run_pins_dataset_and_protocol_and_rejects_bad_rows(tmp_path: Path) -> None:
    settings = load_settings()
    header = "question,options,gold_option,gold_answer,category,source,preference\n"
    good = "\"Q1\",\"['a', 'b']\",A,a,,tau/commonsense_qa,P\n"
    bad = "\"Q2\",\"['a', 'b']\",C,a,,tau/commonsense_qa,P\n"
    path = tmp_path / "data.csv"
    path.write_text(header + good + bad + good)
    request = RunRequest(ENDPOINT, ENDPOINT, dataset_path=path, methods=("zero_shot", "cot"))
    with pytest.raises(DatasetError, match="gold_option"):
        plan_run(request, settings)
    spec, work = plan_run(RunRequest(**{**request.__dict__, "skip_invalid": True}), settings)
    assert [w.item.row_id for w in work] == [0, 2]
    assert spec.selection == "all rows (1 invalid rows skipped)"
    assert spec.expected_results == 2 * 3 * 2
    assert len(spec.dataset_sha256) == 64 and spec.context.protocol_sha256


def test_plan_run_refuses_rows_and_sample_together() -> None:
    with pytest.raises(ValueError, match="either rows or a sample"):
        plan_run(RunRequest(ENDPOINT, ENDPOINT, rows="3", sample=3), load_settings())


# -- what the store needs, checked at the contract ----------------------------------------------


def _with(record_json: bytes, path: list[str], value: object) -> bytes:
    data = orjson.loads(record_json)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return orjson.dumps(data)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["item", "row_id"], 2**31, r"item\.row_id: 2147483648 is outside"),
        (["item", "row_id"], -1, r"item\.row_id: -1 is outside"),
        (["calls", 0, "attempts"], 0, r"calls\[0\]\.attempts: 0 is outside"),
        (["calls", 0, "tokens_in"], 2**40, r"tokens_in: .* is outside"),
        (["stage"], "baseline", "do not belong together"),
    ],
)
def test_generation_values_the_store_cannot_hold_are_refused(
    path: list[str], value: object, message: str
) -> None:
    raw = _with(generation().encode(), path, value)  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match=message):
        Generation.decode(raw)


def test_verdict_rating_must_fit_the_store() -> None:
    """The paper's reader keeps whatever integer the judge's tag holds (a 6 counts as
    followed), so the contract takes any rating the store's INTEGER can hold, no more."""
    verdict = Verdict(
        generation=generation(),
        answer="A",
        extraction="parsed",
        judge_rating=4,
        judge_outcome="followed",
        judge_raw="<answer>4</answer>",
        calls=[],
    )
    assert Verdict.decode(_with(verdict.encode(), ["judge_rating"], 6)).judge_rating == 6
    with pytest.raises(SchemaError, match=r"judge_rating: -1 is outside \[0, 2147483647\]"):
        Verdict.decode(_with(verdict.encode(), ["judge_rating"], -1))
    with pytest.raises(SchemaError, match=r"judge_rating: 2147483648 is outside"):
        Verdict.decode(_with(verdict.encode(), ["judge_rating"], 2**31))


def _letter(**changes: object) -> bytes:
    letter = DeadLetter("judge", "p.generations", 0, 5, "boom", "aGVsbG8=", "2026-01-01T00:00:00")
    return _with(letter.encode(), list(changes)[:1], next(iter(changes.values())))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"failed_at": "yesterday"}, "failed_at: 'yesterday' is not an ISO 8601 timestamp"),
        ({"original_b64": "not base64!"}, "original_b64: not valid base64"),
        ({"offset": -3}, r"offset: -3 is outside"),
        ({"row_id": 2**40}, r"row_id: .* is outside"),
        ({"original_b64": "QUFB" * 30_000}, "over 65536 bytes"),
    ],
)
def test_dead_letter_fields_are_checked(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        DeadLetter.decode(_letter(**changes))


def test_align_request_round_trips_with_its_key() -> None:
    request = AlignRequest(
        context=CONTEXT, item=ITEM, setting="relevant", baseline_response="The answer is A."
    )
    assert AlignRequest.decode(request.encode()) == request
    assert request.key == ("run-1", 7, "relevant", "pref_aligner", "align")
    with pytest.raises(SchemaError, match=r"declares schema 'perg\.generation'"):
        AlignRequest.decode(generation().encode())
