"""Status: GET /jobs/{jobId} (IAM-authorised) -> the job's state, timings, error and output links.

The resolver validates nothing (pydantic and Powertools' OpenAPI machinery would be most of this
function's cold start): the domain checks the job id and builds the answer as a plain dict. The
route's OpenAPI document (``docs/openapi.json``, by ``python -m tools.gen_docs``) comes from
``schemas.status``, which declares the same route with the answers' models.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.utilities.typing import LambdaContext

from aleph_pipeline.log import logger
from aleph_pipeline.status import ROUTE_METHOD, ROUTE_PATH, MalformedJobId, job_status

app = APIGatewayHttpResolver()


@app.route(ROUTE_PATH, method=ROUTE_METHOD)
def get_job(jobId: str) -> dict[str, Any] | Response[dict[str, Any]]:
    try:
        status = job_status(jobId)
    except MalformedJobId as malformed:
        return Response(status_code=422, content_type=content_types.APPLICATION_JSON, body={"statusCode": 422, "detail": malformed.detail})
    if status is None:
        raise NotFoundError(f"no job {jobId}")
    return status


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
