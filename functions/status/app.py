"""Status: GET /jobs/{jobId} (IAM-authorised) -> the job's state, timings, error and output links.

The route's request and response models are declared here, so the API's OpenAPI document is
generated from this code (``python -m tools.gen_docs`` writes ``docs/openapi.json``).
"""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.params import Path
from aws_lambda_powertools.utilities.typing import LambdaContext

from aleph_pipeline.log import logger
from aleph_pipeline.status import JOB_ID_PATTERN, JobStatus, Message, ValidationFailure, job_status

app = APIGatewayHttpResolver(enable_validation=True)


@app.get(
    "/jobs/<jobId>",
    summary="A job's state, timings, error and output links",
    description="IAM-authorised (SigV4). Links are presigned GET URLs valid for an hour.",
    responses={
        200: {"description": "the job", "content": {"application/json": {"model": JobStatus}}},
        404: {"description": "no such job", "content": {"application/json": {"model": Message}}},
        422: {"description": "the job id is not 32 hex characters", "content": {"application/json": {"model": ValidationFailure}}},
    },
    security=[{"AWS_IAM": []}],
    tags=["jobs"],
)
def get_job(jobId: Annotated[str, Path(pattern=JOB_ID_PATTERN, description="the job's id (32 hex characters)")]) -> JobStatus:
    status = job_status(jobId)
    if status is None:
        raise NotFoundError(f"no job {jobId}")
    return status


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
