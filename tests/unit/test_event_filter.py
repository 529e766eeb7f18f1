"""Stream filters matched by moto's EventBridge pattern engine agree with the template's filters' intent."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from aleph_pipeline.jobs import TERMINAL, JobState
from local.event_filter import load_pattern, matches, matches_any
from local.template_config import load_template_config

ROOT = Path(__file__).resolve().parents[2]
STATES = [state.value for state in JobState]
TERMINAL_STATES = {state.value for state in TERMINAL}


@pytest.fixture(scope="module")
def filters() -> dict[str, list[dict[str, Any]]]:
    config = load_template_config(ROOT / "template.yaml")
    found = {}
    for name in ("finalize", "notify"):
        stream = config.functions[name].stream
        assert stream is not None
        found[name] = [load_pattern(p) for p in stream.filters]
    return found


def _record(event_name: str, old: str | None, new: str | None) -> dict[str, Any]:
    images: dict[str, Any] = {"Keys": {"jobId": {"S": "j1"}}}
    if new is not None:
        images["NewImage"] = {"jobId": {"S": "j1"}, "status": {"S": new}}
    if old is not None:
        images["OldImage"] = {"jobId": {"S": "j1"}, "status": {"S": old}}
    return {"eventID": "1", "eventName": event_name, "eventSource": "aws:dynamodb", "dynamodb": images}


# Every transition the table's stream can carry: (eventName, old status, new status).
TRANSITIONS = [
    *(("INSERT", None, new) for new in STATES),
    *(("MODIFY", old, new) for old, new in itertools.product(STATES, STATES)),
    *(("REMOVE", old, None) for old in STATES),
]


@pytest.mark.parametrize(("event_name", "old", "new"), TRANSITIONS)
def test_todays_filters_keep_exactly_what_each_function_is_for(
    filters: dict[str, list[dict[str, Any]]], event_name: str, old: str | None, new: str | None
) -> None:
    record = _record(event_name, old, new)
    # finalize: every write that leaves a job SUCCEEDED; notify: only the move into COMPLETED or FAILED.
    assert matches_any(filters["finalize"], record) is (event_name in ("INSERT", "MODIFY") and new == JobState.SUCCEEDED.value)
    assert matches_any(filters["notify"], record) is (event_name == "MODIFY" and new in TERMINAL_STATES and old not in TERMINAL_STATES)


def test_the_sample_stream_events_are_kept_or_dropped(filters: dict[str, list[dict[str, Any]]]) -> None:
    def records(name: str) -> list[dict[str, Any]]:
        document: dict[str, Any] = json.loads((ROOT / "events" / "finalize" / name).read_text(encoding="utf-8"))
        return list(document["Records"])

    assert all(matches_any(filters["finalize"], r) for r in records("job-succeeded.json"))
    assert not any(matches_any(filters["finalize"], r) for r in records("job-completed-filtered-out.json"))


def test_or_is_supported() -> None:
    pattern = load_pattern('{"$or": [{"eventName": ["INSERT"]}, {"dynamodb": {"NewImage": {"status": {"S": ["FAILED"]}}}}]}')
    assert matches(pattern, _record("INSERT", None, "RECEIVED"))
    assert matches(pattern, _record("MODIFY", "SUBMITTED", "FAILED"))
    assert not matches(pattern, _record("MODIFY", "SUBMITTED", "SUCCEEDED"))
    nested = load_pattern(
        {"eventName": ["MODIFY"], "dynamodb": {"$or": [{"NewImage": {"status": {"S": ["FAILED"]}}}, {"OldImage": {"status": {"S": ["FAILED"]}}}]}}
    )
    assert matches(nested, _record("MODIFY", "FAILED", "FAILED"))
    assert not matches(nested, _record("INSERT", None, "FAILED"))


@pytest.mark.parametrize(
    "pattern", ['{"$or": {"a": ["1"]}}', '{"$or": [{"a": ["1"]}]}', '{"$or": [{"a": ["1"]}, {"a": [{"wildcard": "x*"}]}]}', '{"a": [{"cidr": "10.0.0.0/8"}]}']
)
def test_what_lambda_does_not_document_is_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        load_pattern(pattern)


def test_json_types_stay_apart() -> None:
    assert matches({"b": [True]}, {"b": True}) and not matches({"b": [1]}, {"b": True}) and not matches({"n": [True]}, {"n": 1})
    assert matches({"n": [{"numeric": [">", 1]}]}, {"n": 2}) and not matches({"n": [{"numeric": [">", 1]}]}, {"n": "2"})
