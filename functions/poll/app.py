"""Poll: the delayed messages of the per-job poll loop (PollQueue) -> one provider poll each."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from aleph_pipeline.batches import PartialBatchResponse, Record, sqs_batch_response
from aleph_pipeline.errors import TransientError
from aleph_pipeline.log import logger
from aleph_pipeline.polling import handle_poll_message, seconds_needed_to_poll


def record_handler(record: Record, lambda_context: LambdaContext | None = None) -> None:
    # A record started with too little time left could be cut off mid-poll: report it as failed
    # untouched, and SQS delivers it again (the same message may take its own step again).
    if lambda_context is not None and lambda_context.get_remaining_time_in_millis() / 1000 < seconds_needed_to_poll():
        raise TransientError("too little time left in this invocation; the record is retried")
    handle_poll_message(record["body"], record["messageId"])


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialBatchResponse:
    return sqs_batch_response(event, lambda record: record_handler(record, context))
