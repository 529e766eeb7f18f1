"""Notify: jobs table stream records that moved a job into COMPLETED or FAILED -> EventBridge events,
and the events EventBridge did not take (kept in the undelivered-event queue) -> published again."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from aleph_pipeline.log import logger
from aleph_pipeline.notifications import publish, publish_or_keep, transition_event, undelivered_entry

stream_processor = BatchProcessor(event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False)
undelivered_processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def stream_record_handler(record: DynamoDBRecord) -> None:
    stream = record.dynamodb
    entry = transition_event(stream.old_image if stream else None, stream.new_image if stream else None)
    if entry is not None and publish_or_keep(entry):
        logger.info("job event sent", extra={"detail_type": entry["DetailType"], "job_id": (stream.keys if stream else {}).get("jobId")})


def undelivered_record_handler(record: SQSRecord) -> None:
    # A failure leaves the message in the queue: it is tried again after the visibility timeout.
    entry = undelivered_entry(record.body)
    publish([entry])
    # The raw attribute map: the data class's .get() answers raw dicts, not its wrappers.
    job_id = ((record.raw_event.get("messageAttributes") or {}).get("jobId") or {}).get("stringValue")
    extra = {"detail_type": entry["DetailType"], "job_id": job_id}
    logger.info("kept job event sent", extra={**extra, "receive_count": record.attributes.approximate_receive_count})


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    records = event.get("Records") or [{}]
    if records[0].get("eventSource") == "aws:sqs":
        return process_partial_response(event=event, record_handler=undelivered_record_handler, processor=undelivered_processor, context=context)
    return process_partial_response(event=event, record_handler=stream_record_handler, processor=stream_processor, context=context)
