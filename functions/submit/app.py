"""Submit: SQS batches of S3 ObjectCreated events -> one provider submission per job."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from aleph_pipeline.batches import PartialBatchResponse, Record, receive_count, sqs_batch_response
from aleph_pipeline.errors import TransientError
from aleph_pipeline.intake import handle_object_created, handle_retry, object_created_records, seconds_needed_to_submit
from aleph_pipeline.log import logger
from aleph_pipeline.pacing import retry_job_id


def record_handler(record: Record, lambda_context: LambdaContext | None = None) -> None:
    def time_left() -> float:
        return lambda_context.get_remaining_time_in_millis() / 1000 if lambda_context is not None else float("inf")

    # A record started with too little time left could be cut off mid-submission: report it as
    # failed untouched, and SQS delivers it again.
    if time_left() < seconds_needed_to_submit():
        raise TransientError("too little time left in this invocation; the record is retried")

    deliveries = receive_count(record)
    retry_job = retry_job_id(record["body"])
    if retry_job is not None:  # a job that waited for its provider slot
        handle_retry(retry_job, deliveries, time_left)
        return
    try:
        objects = object_created_records(record["body"])
    except (ValueError, KeyError, TypeError):
        logger.error("dropped a message that is not an S3 notification", extra={"message_id": record["messageId"]})
        return
    for bucket, key in objects:
        handle_object_created(bucket, key, deliveries, time_left)


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialBatchResponse:
    return sqs_batch_response(event, lambda record: record_handler(record, context))
