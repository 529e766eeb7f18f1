"""Notify: jobs table stream records that moved a job into COMPLETED or FAILED -> EventBridge events."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from aleph_pipeline.log import logger
from aleph_pipeline.notifications import publish, transition_event

processor = BatchProcessor(event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False)


def record_handler(record: DynamoDBRecord) -> None:
    stream = record.dynamodb
    entry = transition_event(stream.old_image if stream else None, stream.new_image if stream else None)
    if entry is not None:
        publish([entry])
        logger.info("job event sent", extra={"detail_type": entry["DetailType"], "job_id": (stream.keys if stream else {}).get("jobId")})


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
