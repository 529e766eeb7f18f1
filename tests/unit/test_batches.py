"""Partial batch responses: the same answers and record values as Powertools' BatchProcessor gave the
handlers (raise_on_entire_batch_failure=False), and one log line for each failed record."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from aleph_pipeline.batches import Record, receive_count, sqs_batch_response, stream_batch_response, stream_values
from aleph_pipeline.errors import TransientError

EVENTS = Path(__file__).resolve().parents[2] / "events"
SQS_SAMPLES = ["submit/sidecar-created.json", "submit/video-created-uppercase-ext.json", "poll/poll-step.json", "notify/undelivered-job-event.json"]
STREAM_SAMPLES = ["finalize/job-succeeded.json", "finalize/job-completed-filtered-out.json", "notify/job-failed.json"]


def sample_records(names: list[str]) -> list[Record]:
    return [record for name in names for record in json.loads((EVENTS / name).read_text(encoding="utf-8"))["Records"]]


def sqs_batch() -> dict[str, Any]:
    """The sample messages as one batch, each with its own id as in a real batch."""
    records = sample_records(SQS_SAMPLES)
    for number, record in enumerate(records):
        record["messageId"] = f"{record['messageId'][:-4]}{number:04d}"
    return {"Records": records}


def stream_batch() -> dict[str, Any]:
    """The sample stream records as one batch, each with its own sequence number."""
    records = sample_records(STREAM_SAMPLES)
    for number, record in enumerate(records):
        record["dynamodb"]["SequenceNumber"] = f"{111100000000000000000000 + number}"
    return {"Records": records}


def item_id(record: Record) -> str:
    return str(record.get("messageId") or record["dynamodb"]["SequenceNumber"])


def failing(ids: set[str], seen: list[str]) -> Callable[[Record], None]:
    """A record handler that notes each record it is given and raises for those in ``ids``."""

    def handle(record: Record) -> None:
        seen.append(item_id(record))
        if item_id(record) in ids:
            raise (TransientError if len(seen) % 2 else KeyError)(f"record {item_id(record)} failed")

    return handle


def powertools_answer(event: dict[str, Any], event_type: EventType, fail: set[str]) -> tuple[Any, list[str]]:
    seen: list[str] = []
    handle = failing(fail, seen)
    processor = BatchProcessor(event_type=event_type, raise_on_entire_batch_failure=False)
    answer = process_partial_response(event=copy.deepcopy(event), record_handler=lambda record: handle(record.raw_event), processor=processor)
    return answer, seen


def our_answer(event: dict[str, Any], respond: Callable[..., Any], fail: set[str]) -> tuple[Any, list[str]]:
    seen: list[str] = []
    return respond(copy.deepcopy(event), failing(fail, seen)), seen


BATCHES = [
    pytest.param(sqs_batch, EventType.SQS, sqs_batch_response, id="sqs"),
    pytest.param(stream_batch, EventType.DynamoDBStreams, stream_batch_response, id="dynamodb-stream"),
]


@pytest.mark.parametrize(("batch", "event_type", "respond"), BATCHES)
@pytest.mark.parametrize("failed", ["none", "first", "middle and last", "all"])
def test_the_answer_is_the_one_powertools_gave(batch: Callable[[], dict[str, Any]], event_type: EventType, respond: Callable[..., Any], failed: str) -> None:
    event = batch()
    ids = [item_id(record) for record in event["Records"]]
    fail = {"none": set(), "first": {ids[0]}, "middle and last": {ids[1], ids[-1]}, "all": set(ids)}[failed]

    answer, seen = our_answer(event, respond, fail)

    assert (answer, seen) == powertools_answer(event, event_type, fail)
    assert seen == ids  # every record ran, in order, once
    assert answer == {"batchItemFailures": [{"itemIdentifier": item} for item in ids if item in fail]}


@pytest.mark.parametrize(("batch", "event_type", "respond"), BATCHES)
@pytest.mark.parametrize("event", [{"Records": []}, {}, {"Records": None}], ids=["empty Records", "no Records", "null Records"])
def test_an_event_without_records_is_refused_like_powertools_did(
    batch: Callable[[], dict[str, Any]], event_type: EventType, respond: Callable[..., Any], event: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="no Records"):
        respond(event, failing(set(), []))
    with pytest.raises(Exception, match="Unexpected batch event type"):
        powertools_answer(event, event_type, set())


def test_each_failed_record_is_logged_once_with_its_id_and_error(caplog: pytest.LogCaptureFixture) -> None:
    event = sqs_batch()
    ids = [item_id(record) for record in event["Records"]]
    fail = {ids[0], ids[1]}  # the first raises TransientError, the second KeyError

    with caplog.at_level(logging.INFO):
        sqs_batch_response(event, failing(fail, []))

    failures = [record for record in caplog.records if hasattr(record, "item_identifier")]
    assert [record.item_identifier for record in failures] == [ids[0], ids[1]]
    transient, unexpected = failures
    assert (transient.levelname, transient.error_type, transient.error) == ("WARNING", "TransientError", f"record {ids[0]} failed")
    assert transient.exc_info is None
    # An error nobody expected carries its traceback.
    assert (unexpected.levelname, unexpected.error_type) == ("ERROR", "KeyError")
    assert unexpected.exc_info is not None and unexpected.exc_info[0] is KeyError
    logged = " ".join(f"{record.getMessage()} {record.error}" for record in failures)
    assert all(record["body"] not in logged for record in event["Records"])


def typed(value: Any) -> Any:
    """``value`` with each leaf paired with its type, so that Decimal("1") and 1 compare unequal."""
    if isinstance(value, dict):
        return {name: typed(item) for name, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    if isinstance(value, set):
        return {(type(item), item) for item in value}
    return (type(value), value)


EVERY_ATTRIBUTE_TYPE = {
    "jobId": {"S": "0123456789abcdef0123456789abcdef"},
    "attempts": {"N": "3"},
    "costUsd": {"N": "0.125"},
    "big": {"N": "12345678901234567890123456789012345678"},
    "deadline": {"N": "1748860230.5"},
    "watermark": {"BOOL": False},
    "seed": {"NULL": True},
    "outputKeys": {"L": [{"S": "a.mp4"}, {"N": "2"}, {"M": {"nested": {"N": "-1e3"}}}]},
    "error": {"M": {"code": {"S": "generation_failed"}, "retryable": {"BOOL": True}}},
    "tags": {"SS": ["a", "b"]},
    "sizes": {"NS": ["1", "2.5"]},
}


def stream_records() -> list[Record]:
    records = sample_records(STREAM_SAMPLES)
    every_type = copy.deepcopy(records[0])
    every_type["dynamodb"].update(NewImage=EVERY_ATTRIBUTE_TYPE, OldImage={**EVERY_ATTRIBUTE_TYPE, "attempts": {"N": "2"}})
    only_keys = copy.deepcopy(records[0])  # a KEYS_ONLY view, as in a REMOVE record
    for part in ("NewImage", "OldImage"):
        only_keys["dynamodb"].pop(part, None)
    return [*records, every_type, only_keys]


@pytest.mark.parametrize("record", stream_records())
def test_stream_values_are_the_ones_powertools_data_class_gave(record: Record) -> None:
    stream = DynamoDBRecord(record).dynamodb
    assert stream is not None
    assert typed(stream_values(record, "Keys")) == typed(stream.keys)
    assert typed(stream_values(record, "NewImage")) == typed(stream.new_image)
    assert typed(stream_values(record, "OldImage")) == typed(stream.old_image)


def test_stream_numbers_are_decimals() -> None:
    values = stream_values(stream_records()[-2], "NewImage")
    assert values["attempts"] == Decimal(3) and isinstance(values["attempts"], Decimal)
    assert values["costUsd"] == Decimal("0.125")
    assert values["sizes"] == {Decimal(1), Decimal("2.5")}


def test_receive_count_reads_the_sqs_attribute() -> None:
    message = sample_records(["poll/poll-step.json"])[0]
    message["attributes"]["ApproximateReceiveCount"] = "4"
    assert receive_count(message) == 4


def test_no_record_logs_with_the_job_id_of_the_record_before_it() -> None:
    from aleph_pipeline.log import logger

    seen: list[Any] = []

    def handle(message: Record) -> None:
        seen.append(logger.thread_safe_get_current_keys().get("job_id"))
        logger.thread_safe_append_keys(job_id=message["messageId"])

    event = {"Records": [{"messageId": "m1", "body": "{}"}, {"messageId": "m2", "body": "{}"}]}
    assert sqs_batch_response(event, handle) == {"batchItemFailures": []}
    assert seen == [None, None]
