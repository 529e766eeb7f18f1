"""Which stream records become job events, what the events carry, that they stay under EventBridge's
size limit, and that an event EventBridge refuses is kept and published again (moto server)."""

from __future__ import annotations

import importlib.util
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from aleph_pipeline import clients, notifications
from aleph_pipeline.config import get_settings
from aleph_pipeline.notifications import (
    EVENT_BUDGET_BYTES,
    MAX_ENTRIES_PER_CALL,
    MAX_ENTRY_BYTES,
    MAX_MESSAGE_CHARS,
    MAX_OUTPUT_KEYS,
    SOURCE,
    UNDELIVERED_QUEUE_ENV,
    entry_size,
    transition_event,
    undelivered_entry,
)
from local.dispatcher import build_sqs_event
from schemas.job_events import EventError, JobEventDetail

ROOT = Path(__file__).resolve().parents[2]

JOB = "0123456789abcdef0123456789abcdef"


def image(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "jobId": JOB,
        "status": status,
        "inputBucket": "aleph-input",
        "sidecarKey": "incoming/a/shot.json",
        "outputPrefix": f"a/shot/{JOB}/",
        "createdAt": "2026-01-01T00:00:00.000Z",
        "updatedAt": "2026-01-01T00:01:00.000Z",
        **extra,
    }


def test_completed_transition_becomes_a_job_completed_event() -> None:
    outputs = [{"key": f"a/shot/{JOB}/result.mp4", "size": 10}, {"key": f"a/shot/{JOB}/cover.png", "size": 2}]
    entry = transition_event(image("SUCCEEDED"), image("COMPLETED", provider="kie", model="aleph", videoKey="incoming/a/shot.mp4", outputs=outputs, cost=1.5))
    assert entry is not None
    assert (entry["Source"], entry["DetailType"], entry["EventBusName"]) == (SOURCE, "Job Completed", "default")
    detail = JobEventDetail.model_validate_json(entry["Detail"])
    assert detail.state == "COMPLETED"
    assert detail.inputKey == "incoming/a/shot.mp4"
    assert detail.outputKeys == [f"a/shot/{JOB}/result.mp4", f"a/shot/{JOB}/cover.png", f"a/shot/{JOB}/job.json"]
    assert detail.cost == 1.5
    assert detail.error is None


def test_failed_transition_carries_the_error() -> None:
    error = {"code": "invalid_sidecar", "message": "unknown field `colour`", "stage": "intake", "retryable": False, "hint": "Fix it."}
    entry = transition_event(image("RECEIVED"), image("FAILED", error=error))
    assert entry is not None and entry["DetailType"] == "Job Failed"
    detail = json.loads(entry["Detail"])
    assert detail["error"] == error
    assert detail["outputKeys"] == [f"a/shot/{JOB}/error.json"]
    assert detail["provider"] is None


def test_the_detail_has_the_documented_fields_in_their_order() -> None:
    # The detail is built as a plain dict (the notify function does not import pydantic): it must
    # still be exactly the documented schema, field for field and in its order.
    error = {"code": "invalid_sidecar", "message": "m", "stage": "intake", "retryable": False, "hint": "h"}
    completed = transition_event(image("SUCCEEDED"), image("COMPLETED", provider="kie", cost=2))
    failed = transition_event(image("RECEIVED"), image("FAILED", error=error))
    assert completed is not None and failed is not None
    for entry in (completed, failed):
        detail = json.loads(entry["Detail"])
        assert list(detail) == list(JobEventDetail.model_fields)
        assert JobEventDetail.model_validate(detail).model_dump(mode="json") == detail
    assert list(json.loads(failed["Detail"])["error"]) == list(EventError.model_fields)
    assert json.loads(completed["Detail"])["cost"] == 2.0


def test_other_records_make_no_event() -> None:
    assert transition_event(image("RECEIVED"), image("SUBMITTED")) is None
    assert transition_event(image("FAILED"), image("FAILED", providerTaskId="late")) is None  # a later write, not the transition
    assert transition_event(None, {"jobId": "waiting#b/k", "waitingJobIds": {JOB}}) is None  # a pairing note
    assert transition_event(image("SUBMITTED"), None) is None


# ------------------------------------------------------------------ bounded events (EventBridge's 256 KB)


def failed_entry(message: str, **extra: Any) -> dict[str, Any]:
    error = {"code": "generation_failed", "message": message, "stage": "provider", "retryable": False, "hint": "Adjust the prompt."}
    entry = transition_event(image("SUBMITTED"), image("FAILED", error=error, **extra))
    assert entry is not None
    return entry


def test_entry_size_is_counted_as_eventbridge_counts_it() -> None:
    entry = {"Source": "a.b", "DetailType": "Jöb", "Detail": '{"x":"é"}', "Resources": ["arn:1", "arn:22"], "Time": "2026-01-01T00:00:00Z"}
    assert entry_size(entry) == 3 + 4 + 10 + 5 + 6 + 14
    assert entry_size({"Source": "s", "DetailType": "t", "Detail": "{}", "EventBusName": "not counted"}) == 4


def test_a_300_kb_error_message_is_cut_with_a_marker_and_the_event_stays_under_the_limit() -> None:
    message = "The provider said: " + "x" * 300_000
    entry = failed_entry(message)
    assert entry_size(entry) <= EVENT_BUDGET_BYTES < MAX_ENTRY_BYTES
    detail = JobEventDetail.model_validate_json(entry["Detail"])
    assert detail.error is not None
    assert detail.error.message.startswith("The provider said: xxx")
    assert detail.error.message.endswith(f"[truncated: {len(message)} characters in all]")
    assert len(detail.error.message) <= MAX_MESSAGE_CHARS
    assert detail.error.code == "generation_failed" and detail.outputKeys == [f"a/shot/{JOB}/error.json"]


def test_a_250_kb_metadata_and_other_large_fields_never_make_an_event_over_the_limit() -> None:
    metadata = {"notes": "m" * 250_000}
    sidecar = json.dumps({"prompt": "p", "metadata": metadata})
    # Control characters take 6 bytes each once escaped in the detail: the budget counts bytes.
    entry = failed_entry("\x01" * 200_000, sidecarJson=sidecar, videoUrl="https://example.test/" + "u" * 250_000, model="é" * 100_000)
    assert entry_size(entry) <= EVENT_BUDGET_BYTES
    detail = json.loads(entry["Detail"])
    assert "m" * 1000 not in entry["Detail"]  # the sidecar is never echoed
    assert detail["inputUrl"].startswith("https://example.test/uuu") and "[truncated: 250021 characters in all]" in detail["inputUrl"]
    assert detail["sidecarKey"] == "incoming/a/shot.json"  # short fields are never cut
    JobEventDetail.model_validate(detail)


def test_an_event_that_fits_is_not_cut() -> None:
    entry = failed_entry("unknown field `colour`")
    assert "truncated" not in entry["Detail"]
    assert json.loads(entry["Detail"])["error"]["message"] == "unknown field `colour`"


def test_many_output_keys_keep_the_manifest_key() -> None:
    outputs = [{"key": f"a/shot/{JOB}/result-{index}.mp4", "size": 1} for index in range(1, 60)]
    entry = transition_event(image("SUCCEEDED"), image("COMPLETED", outputs=outputs))
    assert entry is not None
    keys = json.loads(entry["Detail"])["outputKeys"]
    assert len(keys) == MAX_OUTPUT_KEYS
    assert keys[0] == f"a/shot/{JOB}/result-1.mp4" and keys[-1] == f"a/shot/{JOB}/job.json"


class RecordingEvents:
    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(Entries)
        return {"FailedEntryCount": 0, "Entries": [{"EventId": str(index)} for index in range(len(Entries))]}


def test_publish_keeps_each_call_within_ten_entries_and_the_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = RecordingEvents()
    monkeypatch.setattr(notifications, "_events_client", lambda: recorder)
    # Events near the budget: four fit one call, not ten.
    entries = [{"Source": SOURCE, "DetailType": "Job Failed", "Detail": json.dumps({"n": index, "pad": "y" * 60_000})} for index in range(12)]
    notifications.publish(entries)
    assert [entry for call in recorder.calls for entry in call] == entries
    assert all(len(call) <= MAX_ENTRIES_PER_CALL and sum(map(entry_size, call)) <= MAX_ENTRY_BYTES for call in recorder.calls)
    assert len(recorder.calls) == 3


# ------------------------------------------------------------------ undelivered events are kept and published again (moto server)


class Context:
    function_name = "notify"
    memory_limit_in_mb = "256"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:notify"
    aws_request_id = "notify-request"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


def notify_handler() -> Any:
    spec = importlib.util.spec_from_file_location(f"notify_app_{uuid.uuid4().hex}", ROOT / "functions" / "notify" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lambda_handler


def clear_clients() -> None:
    for cached in (get_settings, notifications._events_client, clients.client):
        cached.cache_clear()


@dataclass
class Bus:
    """An EventBridge bus in moto whose events a rule delivers to a queue, and the undelivered-event queue."""

    sqs: Any
    events: Any
    name: str
    undelivered_url: str
    delivered_url: str

    def create(self) -> None:
        self.events.create_event_bus(Name=self.name)
        arn = self.sqs.get_queue_attributes(QueueUrl=self.delivered_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.events.put_rule(Name=self.name, EventBusName=self.name, EventPattern=json.dumps({"source": [SOURCE]}))
        self.events.put_targets(Rule=self.name, EventBusName=self.name, Targets=[{"Id": "queue", "Arn": arn}])

    def messages(self, url: str) -> list[dict[str, Any]]:
        answer = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2, MessageAttributeNames=["All"], AttributeNames=["All"])
        messages: list[dict[str, Any]] = answer.get("Messages", [])
        return messages


@pytest.fixture
def bus(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bus]:
    """A bus that does not exist yet (PutEvents to it fails) and the notify function's settings for it."""
    suffix = uuid.uuid4().hex[:8]
    sqs, events = boto3.client("sqs", endpoint_url=moto_server), boto3.client("events", endpoint_url=moto_server)
    found = Bus(
        sqs,
        events,
        f"jobs-{suffix}",
        sqs.create_queue(QueueName=f"undelivered-{suffix}")["QueueUrl"],
        sqs.create_queue(QueueName=f"delivered-{suffix}")["QueueUrl"],
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("EVENT_BUS_NAME", found.name)
    monkeypatch.setenv(UNDELIVERED_QUEUE_ENV, found.undelivered_url)
    monkeypatch.setattr(notifications, "REPUBLISH_DELAY_SECONDS", 0)
    clear_clients()
    yield found
    clear_clients()


def sample(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((ROOT / "events" / "notify" / name).read_text(encoding="utf-8"))
    return event


def test_an_event_eventbridge_refuses_is_kept_whole_in_the_undelivered_queue(bus: Bus) -> None:
    handler = notify_handler()
    assert handler(sample("job-failed.json"), Context()) == {"batchItemFailures": []}  # kept, so the stream moves on
    (message,) = bus.messages(bus.undelivered_url)
    kept = json.loads(message["Body"])
    assert (kept["Source"], kept["DetailType"], kept["EventBusName"]) == (SOURCE, "Job Failed", bus.name)
    detail = JobEventDetail.model_validate_json(kept["Detail"])
    assert detail.jobId == JOB and detail.error is not None and detail.error.code == "generation_failed"
    assert message["MessageAttributes"]["jobId"]["StringValue"] == JOB
    assert f"Event bus {bus.name} does not exist" in message["MessageAttributes"]["reason"]["StringValue"]


def test_a_kept_event_is_published_again_once_eventbridge_takes_it(bus: Bus) -> None:
    handler = notify_handler()
    handler(sample("job-failed.json"), Context())
    (message,) = bus.messages(bus.undelivered_url)
    undelivered_event = build_sqs_event([message], "arn:aws:sqs:us-east-1:123456789012:undelivered", "us-east-1")
    # Still refused: the message is reported failed, so SQS keeps it for the next try.
    failed = handler(undelivered_event, Context())
    assert failed == {"batchItemFailures": [{"itemIdentifier": message["MessageId"]}]}
    bus.create()
    assert handler(undelivered_event, Context()) == {"batchItemFailures": []}
    (delivered,) = bus.messages(bus.delivered_url)
    event = json.loads(delivered["Body"])
    assert (event["source"], event["detail-type"]) == (SOURCE, "Job Failed")
    assert event["detail"] == json.loads(json.loads(message["Body"])["Detail"])


def test_without_the_queue_a_refused_event_is_left_to_the_stream(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNDELIVERED_QUEUE_ENV)
    event = sample("job-failed.json")
    answer = notify_handler()(event, Context())
    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["dynamodb"]["SequenceNumber"]}]}
    assert bus.messages(bus.undelivered_url) == []


def test_the_undelivered_sample_event_is_published(bus: Bus) -> None:
    bus.create()
    assert notify_handler()(sample("undelivered-job-event.json"), Context()) == {"batchItemFailures": []}
    (delivered,) = bus.messages(bus.delivered_url)
    assert json.loads(delivered["Body"])["detail"]["jobId"] == JOB


def test_a_message_that_is_not_an_entry_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="not a PutEvents entry: no text Detail"):
        undelivered_entry(json.dumps({"Source": SOURCE, "DetailType": "Job Failed"}))
    with pytest.raises(ValueError, match="not JSON"):
        undelivered_entry("{")
