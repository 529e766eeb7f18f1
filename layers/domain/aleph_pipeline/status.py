"""What the status API answers about a job: its state, timings, error, and links to its outputs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import storage
from .config import get_settings
from .jobs import Job, JobState, JobStore

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
LINK_TTL_SECONDS = 3600


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


def job_status(job_id: str, store: JobStore | None = None) -> JobStatus | None:
    """The job's status with presigned links to its outputs; None when there is no such job."""
    job = (store or JobStore()).get(job_id)
    if job is None:
        return None
    return describe(job)


def describe(job: Job) -> JobStatus:
    item = job.to_manifest()
    bucket = get_settings().output_bucket_name
    history = [HistoryEntry(state=str(h.get("state")), at=str(h.get("at"))) for h in item.get("history") or [] if isinstance(h, dict)]
    finished = item.get("updatedAt") if job.state in (JobState.COMPLETED, JobState.FAILED) else None
    outputs: list[OutputLink] = []
    prefix = item.get("outputPrefix")
    listed = [(str(o["key"]), o.get("size")) for o in item.get("outputs") or [] if isinstance(o, dict) and "key" in o]
    if prefix and job.state == JobState.COMPLETED:
        listed.append((f"{prefix}job.json", None))
    elif prefix and job.state == JobState.FAILED:
        listed.append((f"{prefix}error.json", None))
    for key, size in listed:
        outputs.append(OutputLink(key=key, size=int(size) if isinstance(size, int) else None, url=storage.presign_get(bucket, key, LINK_TTL_SECONDS)))
    error = item.get("error") if job.state == JobState.FAILED else None
    cost, estimate = item.get("cost"), item.get("costEstimate")
    return JobStatus(
        jobId=job.id,
        state=job.state.value,
        provider=item.get("provider"),
        model=item.get("model"),
        sidecarKey=item.get("sidecarKey"),
        inputKey=item.get("videoKey") or item.get("videoUrl"),
        outputBucket=bucket,
        outputPrefix=prefix,
        cost=float(cost) if isinstance(cost, int | float) else None,
        costEstimate=float(estimate) if isinstance(estimate, int | float) else None,
        waitingFor=job.waiting_for,
        timings=Timings(
            createdAt=item.get("createdAt"),
            submittedAt=item.get("submittedAt"),
            finishedAt=finished,
            elapsedSeconds=_seconds_between(item.get("createdAt"), finished or item.get("updatedAt")),
        ),
        history=history,
        providersTried=[
            ProviderTried(**{k: v for k, v in entry.items() if k in ProviderTried.model_fields and v is not None})
            for entry in job.providers_tried
            if entry.get("provider")
        ],
        error=StatusError(**{k: v for k, v in error.items() if k in StatusError.model_fields and v is not None}) if isinstance(error, dict) else None,
        outputs=outputs,
    )


def _seconds_between(start: object, end: object) -> float | None:
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    try:
        delta = datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round(delta.total_seconds(), 3)
