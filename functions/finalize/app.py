"""Finalize: jobs that became SUCCEEDED (stream, filtered) -> outputs copied, job COMPLETED."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from aleph_pipeline.batches import PartialBatchResponse, Record, stream_batch_response, stream_values
from aleph_pipeline.finalize import finalize_job
from aleph_pipeline.log import logger


def record_handler(record: Record) -> None:
    finalize_job(str(stream_values(record, "Keys")["jobId"]))


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialBatchResponse:
    return stream_batch_response(event, record_handler)
