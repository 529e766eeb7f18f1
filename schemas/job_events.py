"""The documented shape of a job event's ``detail`` (``notifications`` builds it as a plain dict).

A pydantic model so that the README's event table (``tools.gen_docs``) and the tests read one
schema; the notify function never imports it (pydantic's model machinery is most of what its cold
start would cost).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EventError(BaseModel):
    """Why a job failed (the same fields as ``error.json``)."""

    model_config = ConfigDict(frozen=True)

    code: str = Field(description="the error code (see the error-code table)")
    message: str = Field(description="what went wrong, naming the field, file or provider answer")
    stage: str = Field(description="`intake`, `submit`, `provider` or `finalize`")
    retryable: bool = Field(description="whether uploading the sidecar again could succeed")
    hint: str = Field(description="what to do about it")


class JobEventDetail(BaseModel):
    """The ``detail`` of a ``Job Completed`` / ``Job Failed`` event (source ``aleph.pipeline``)."""

    model_config = ConfigDict(frozen=True)

    jobId: str = Field(description="the job's id (32 hex characters)")
    state: Literal["COMPLETED", "FAILED"] = Field(description="the state the job reached")
    stack: str = Field(description="the CloudFormation stack that ran the job")
    provider: str | None = Field(description="the provider id (null when the job failed before one was chosen)")
    model: str | None = Field(description="the provider's model id")
    inputBucket: str | None = Field(description="the input bucket")
    sidecarKey: str | None = Field(description="the sidecar's key in the input bucket")
    inputKey: str | None = Field(description="the video's key in the input bucket (null for an https video or before it was found)")
    inputUrl: str | None = Field(description="the video's https URL when the sidecar named one")
    outputBucket: str = Field(description="the output bucket")
    outputPrefix: str | None = Field(description="the job's folder in the output bucket")
    outputKeys: list[str] = Field(description="keys of the results, cover, and job.json or error.json")
    cost: float | None = Field(description="what the provider charged, when it says")
    error: EventError | None = Field(description="why the job failed (null when it completed)")
    createdAt: str | None = Field(description="when the job was received (ISO 8601, UTC)")
    finishedAt: str | None = Field(description="when it reached its state")
