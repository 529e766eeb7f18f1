"""The status API's schema, for its OpenAPI document and the tests; never on the handler's cold path.

``status.describe`` builds the answers as plain dicts in these models' field order (pydantic and
Powertools' OpenAPI machinery would be most of what the status function's cold start costs), and
``documented_api`` declares the handler's route with these models, so ``tools.gen_docs`` writes
``docs/openapi.json`` from them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.openapi.params import Path
from pydantic import BaseModel, ConfigDict, Field

from aleph_pipeline.status import JOB_ID_PATTERN, ROUTE_METHOD, ROUTE_PATH


class HistoryEntry(BaseModel):
    state: str = Field(description="a state the job entered")
    at: str = Field(description="when (ISO 8601, UTC)")


class ProviderTried(BaseModel):
    provider: str = Field(description="a provider of the job's chain that did not take it")
    model: str | None = Field(default=None, description="the model it was asked for")
    reason: str = Field(default="", description="its answer (maintenance, feature disabled, out of credits)")
    code: str | None = Field(default=None, description="the error code that answer maps to")
    at: str | None = Field(default=None, description="when the job moved on (ISO 8601, UTC)")


class Timings(BaseModel):
    createdAt: str | None = Field(description="when the job was received")
    submittedAt: str | None = Field(default=None, description="when the provider took it")
    finishedAt: str | None = Field(default=None, description="when it became COMPLETED or FAILED")
    elapsedSeconds: float | None = Field(default=None, description="from received to finished (or to its last change, while it runs)")


class StatusError(BaseModel):
    code: str = Field(description="the error code (see the README's error-code table)")
    message: str = Field(description="what went wrong")
    stage: str = Field(default="", description="`intake`, `submit`, `provider` or `finalize`")
    retryable: bool = Field(default=False, description="whether uploading the sidecar again could succeed")
    hint: str = Field(default="", description="what to do about it")


class OutputLink(BaseModel):
    key: str = Field(description="the object's key in the output bucket")
    size: int | None = Field(default=None, description="bytes")
    url: str = Field(description="a presigned GET URL, valid for an hour")


class JobStatus(BaseModel):
    """A job as the status API shows it."""

    model_config = ConfigDict(frozen=True)

    jobId: str
    state: Literal["RECEIVED", "SUBMITTED", "SUCCEEDED", "COMPLETED", "FAILED"]
    provider: str | None = None
    model: str | None = None
    sidecarKey: str | None = None
    inputKey: str | None = None
    outputBucket: str
    outputPrefix: str | None = None
    cost: float | None = Field(default=None, description="what the provider reported the job cost (USD), when it reports one")
    costEstimate: float | None = Field(default=None, description="the job's cost estimated before it was sent (USD; see ProviderPrices)")
    waitingFor: str | None = Field(
        default=None, description="why a RECEIVED job waits (its video, a provider that did not take the request, or an unanswered submit)"
    )
    timings: Timings
    history: list[HistoryEntry]
    providersTried: list[ProviderTried] = Field(default_factory=list, description="the providers of its chain the job moved on from, in order, and why")
    error: StatusError | None = None
    outputs: list[OutputLink] = Field(description="results and cover, then job.json or error.json; empty while the job runs")


class Message(BaseModel):
    """The API's answer when there is nothing to show (404)."""

    statusCode: int
    message: str


class ValidationFailure(BaseModel):
    """The API's answer to a malformed request (422)."""

    statusCode: int
    detail: list[dict[str, Any]]


def documented_api() -> APIGatewayHttpResolver:
    """A resolver that declares the status route (``ROUTE_METHOD`` ``ROUTE_PATH``, like the
    handler's app) with its parameter and answers, for the OpenAPI document only."""
    api = APIGatewayHttpResolver(enable_validation=True)

    @api.route(
        ROUTE_PATH,
        method=ROUTE_METHOD,
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
        raise NotImplementedError("documentation only: functions/status/app.py answers this route")

    return api
