"""Partial batch responses for the SQS and DynamoDB stream events Lambda delivers in batches.

Each record of an event's ``Records`` is handled on its own: a record whose handler raises is
logged and reported in ``batchItemFailures``, the others still run, and a batch whose records all
failed is reported the same way, not raised, so the event source retries only the failed ones.
The semantics of Powertools' ``BatchProcessor`` with ``raise_on_entire_batch_failure=False``,
without its import cost on a cold start (asyncio, and every event data class Powertools has).
Records stay the plain dicts Lambda delivers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypedDict

from boto3.dynamodb.types import TypeDeserializer

from aleph_pipeline.errors import TransientError
from aleph_pipeline.log import logger

Record = dict[str, Any]


class ItemFailure(TypedDict):
    itemIdentifier: str | None


class PartialBatchResponse(TypedDict):
    batchItemFailures: list[ItemFailure]


def sqs_batch_response(event: dict[str, Any], handle_message: Callable[[Record], None]) -> PartialBatchResponse:
    """Each SQS message handled; the failed ones reported by ``messageId``."""
    return _partial_batch_response(event, handle_message, lambda message: message["messageId"])


def stream_batch_response(event: dict[str, Any], handle_record: Callable[[Record], None]) -> PartialBatchResponse:
    """Each DynamoDB stream record handled; the failed ones reported by their sequence number."""
    return _partial_batch_response(event, handle_record, lambda record: (record.get("dynamodb") or {}).get("SequenceNumber"))


def receive_count(message: Record) -> int:
    """How many times SQS has delivered this message, this delivery included."""
    return int((message.get("attributes") or {}).get("ApproximateReceiveCount") or 1)


_deserializer = TypeDeserializer()


def stream_values(record: Record, part: Literal["Keys", "NewImage", "OldImage"]) -> dict[str, Any]:
    """A stream record's keys or item image as Python values (numbers as Decimal); {} when absent."""
    attributes = (record.get("dynamodb") or {}).get(part) or {}
    return {name: _deserializer.deserialize(value) for name, value in attributes.items()}


def _partial_batch_response(event: dict[str, Any], handle: Callable[[Record], None], identifier: Callable[[Record], str | None]) -> PartialBatchResponse:
    records = event.get("Records")
    if not records or not isinstance(records, list):
        # Lambda never delivers an empty batch: this is some other event sent to a batch handler.
        raise ValueError("the event has no Records: it is not an SQS or DynamoDB stream batch")
    failures: list[ItemFailure] = []
    for record in records:
        logger.thread_safe_clear_keys()  # each record is its own job: no job id carried over
        try:
            handle(record)
        except Exception as error:
            item = identifier(record)
            failures.append({"itemIdentifier": item})
            extra = {"item_identifier": item, "error_type": type(error).__name__, "error": str(error)}
            # A transient error is the expected way to ask for a redelivery: no traceback for it.
            if isinstance(error, TransientError):
                logger.warning("record failed for now; it is retried", extra=extra)
            else:
                logger.exception("record failed; it is retried", extra=extra)
    return {"batchItemFailures": failures}
