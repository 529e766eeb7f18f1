"""Notify: jobs table stream records that moved a job into COMPLETED or FAILED -> EventBridge events,
and the events EventBridge did not take (kept in the undelivered-event queue) -> published again."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from aleph_pipeline.batches import PartialBatchResponse, Record, receive_count, sqs_batch_response, stream_batch_response, stream_values
from aleph_pipeline.log import logger
from aleph_pipeline.notifications import publish, publish_or_keep, transition_event, undelivered_entry


def stream_record_handler(record: Record) -> None:
    entry = transition_event(stream_values(record, "OldImage"), stream_values(record, "NewImage"))
    if entry is not None and publish_or_keep(entry):
        logger.info("job event sent", extra={"detail_type": entry["DetailType"], "job_id": stream_values(record, "Keys").get("jobId")})


def undelivered_record_handler(record: Record) -> None:
    # A failure leaves the message in the queue: it is tried again after the visibility timeout.
    entry = undelivered_entry(record["body"])
    publish([entry])
    job_id = ((record.get("messageAttributes") or {}).get("jobId") or {}).get("stringValue")
    extra = {"detail_type": entry["DetailType"], "job_id": job_id}
    logger.info("kept job event sent", extra={**extra, "receive_count": receive_count(record)})


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialBatchResponse:
    records = event.get("Records") or [{}]
    if records[0].get("eventSource") == "aws:sqs":
        return sqs_batch_response(event, undelivered_record_handler)
    return stream_batch_response(event, stream_record_handler)
