"""EventBridge notifications: one event for every job that becomes COMPLETED or FAILED.

The notify function reads the jobs table's stream (filtered to the records that moved a job into
a terminal state), so the state machine in ``jobs.py`` stays the only writer of job state and a
notification is retried by the stream until EventBridge took it (at least once; consumers
deduplicate on ``detail.jobId`` + ``detail.state``). The detail's shape is ``JobEventDetail``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import get_settings
from .errors import HINTS
from .jobs import TERMINAL, Job, JobState

SOURCE = "aleph.pipeline"
DETAIL_TYPES: dict[JobState, str] = {JobState.COMPLETED: "Job Completed", JobState.FAILED: "Job Failed"}
MAX_ENTRIES_PER_CALL = 10  # PutEvents' limit


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


def transition_event(old_image: Mapping[str, Any] | None, new_image: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The PutEvents entry for a stream record that moved a job into COMPLETED or FAILED, else None."""
    if not new_image or "status" not in new_image or "jobId" not in new_image:
        return None
    new = Job(dict(new_image))
    try:
        state = new.state
    except ValueError:
        return None
    if state not in TERMINAL:
        return None
    if old_image and old_image.get("status") == new_image.get("status"):
        return None  # a later write to a finished job, not its transition
    detail = job_event_detail(new)
    return {
        "Source": SOURCE,
        "DetailType": DETAIL_TYPES[state],
        "Detail": detail.model_dump_json(),
        "EventBusName": get_settings().event_bus_name,
    }


def job_event_detail(job: Job) -> JobEventDetail:
    item = job.to_manifest()
    settings = get_settings()
    prefix = item.get("outputPrefix")
    error: EventError | None = None
    keys: list[str] = [str(output["key"]) for output in item.get("outputs") or [] if isinstance(output, dict) and "key" in output]
    if job.state == JobState.FAILED:
        record = item.get("error") or {}
        code = str(record.get("code", "unknown"))
        error = EventError(
            code=code,
            message=str(record.get("message", "")),
            stage=str(record.get("stage", "")),
            retryable=bool(record.get("retryable", False)),
            hint=str(record.get("hint") or HINTS.get(code, "")),
        )
        if prefix:
            keys.append(f"{prefix}error.json")
    elif prefix:
        keys.append(f"{prefix}job.json")
    cost = item.get("cost")
    return JobEventDetail(
        jobId=job.id,
        state=job.state.value,  # type: ignore[arg-type]  # TERMINAL only
        stack=settings.stack_name,
        provider=item.get("provider"),
        model=item.get("model"),
        inputBucket=item.get("inputBucket"),
        sidecarKey=item.get("sidecarKey"),
        inputKey=item.get("videoKey"),
        inputUrl=item.get("videoUrl"),
        outputBucket=settings.output_bucket_name,
        outputPrefix=prefix,
        outputKeys=keys,
        cost=float(cost) if isinstance(cost, int | float) else None,
        error=error,
        createdAt=item.get("createdAt"),
        finishedAt=item.get("updatedAt"),
    )


class PublishFailed(RuntimeError):
    """EventBridge did not take every entry (the stream retries the record)."""


@lru_cache(maxsize=1)
def _events_client() -> Any:
    import boto3

    return boto3.client("events")


def publish(entries: Sequence[dict[str, Any]]) -> None:
    """Send the entries; raise ``PublishFailed`` naming the first refusal if any was not taken."""
    for start in range(0, len(entries), MAX_ENTRIES_PER_CALL):
        chunk = list(entries[start : start + MAX_ENTRIES_PER_CALL])
        answer = _events_client().put_events(Entries=chunk)
        if answer.get("FailedEntryCount"):
            refused: dict[str, Any] = next((e for e in answer.get("Entries", []) if e.get("ErrorCode")), {})
            raise PublishFailed(f"EventBridge refused {answer['FailedEntryCount']} event(s): {refused.get('ErrorCode')}: {refused.get('ErrorMessage')}")
