"""Poll: the delayed messages of the per-job poll loop (PollQueue) -> one provider poll each."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from aleph_pipeline.errors import TransientError
from aleph_pipeline.log import logger
from aleph_pipeline.polling import handle_poll_message, seconds_needed_to_poll

# A batch whose records all failed is reported like any other, not raised: SQS retries just those.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def record_handler(record: SQSRecord, lambda_context: LambdaContext | None = None) -> None:
    logger.thread_safe_clear_keys()  # each record is its own job

    # A record started with too little time left could be cut off mid-poll: report it as failed
    # untouched, and SQS delivers it again (the same message may take its own step again).
    if lambda_context is not None and lambda_context.get_remaining_time_in_millis() / 1000 < seconds_needed_to_poll():
        raise TransientError("too little time left in this invocation; the record is retried")
    handle_poll_message(record.body, record.message_id)


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
