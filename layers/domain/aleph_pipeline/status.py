"""What the status API answers about a job: its state, timings, error, and links to its outputs.

The answers are plain dicts, in the field order of ``schemas.status.JobStatus`` (the documented
schema, a pydantic model the status function never imports: pydantic and Powertools' request
validation would be most of its cold start), and the job id is checked here, not by the resolver.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from . import storage
from .config import get_settings
from .jobs import Job, JobState, JobStore

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
# The route, in Powertools' rule syntax, for the handler's app and the documented one alike.
ROUTE_METHOD = "GET"
ROUTE_PATH = "/jobs/<jobId>"
LINK_TTL_SECONDS = 3600

_JOB_ID = re.compile(JOB_ID_PATTERN)


class MalformedJobId(ValueError):
    """A job id that does not match ``JOB_ID_PATTERN``: the API answers 422 with ``detail``."""

    def __init__(self) -> None:
        super().__init__("jobId is not 32 lowercase hex characters")
        # What Powertools' request validation answered for it (location and error type, no
        # message), so that the 422 keeps its documented shape, ``schemas.status.ValidationFailure``.
        self.detail: list[dict[str, Any]] = [{"loc": ["path", "jobId"], "type": "string_pattern_mismatch"}]


def job_status(job_id: str, store: JobStore | None = None) -> dict[str, Any] | None:
    """The job's status with presigned links to its outputs; None when there is no such job.
    Raises ``MalformedJobId`` for an id that cannot be a job's."""
    if not _JOB_ID.fullmatch(job_id):  # fullmatch: ``$`` alone would let a trailing newline through
        raise MalformedJobId()
    job = (store or JobStore()).get(job_id)
    if job is None:
        return None
    return describe(job)


def describe(job: Job) -> dict[str, Any]:
    """The job as the status API shows it: the fields of ``schemas.status.JobStatus``, in its order."""
    item = job.to_manifest()
    bucket = get_settings().output_bucket_name
    history = [{"state": str(h.get("state")), "at": str(h.get("at"))} for h in item.get("history") or [] if isinstance(h, dict)]
    finished = item.get("updatedAt") if job.state in (JobState.COMPLETED, JobState.FAILED) else None
    outputs: list[dict[str, Any]] = []
    prefix = item.get("outputPrefix")
    listed = [(str(o["key"]), o.get("size")) for o in item.get("outputs") or [] if isinstance(o, dict) and "key" in o]
    if prefix and job.state == JobState.COMPLETED:
        listed.append((f"{prefix}job.json", None))
    elif prefix and job.state == JobState.FAILED:
        listed.append((f"{prefix}error.json", None))
    for key, size in listed:
        outputs.append({"key": key, "size": int(size) if isinstance(size, int) else None, "url": storage.presign_get(bucket, key, LINK_TTL_SECONDS)})
    error = item.get("error") if job.state == JobState.FAILED else None
    cost, estimate = item.get("cost"), item.get("costEstimate")
    return {
        "jobId": job.id,
        "state": job.state.value,
        "provider": _text(item.get("provider")),
        "model": _text(item.get("model")),
        "sidecarKey": _text(item.get("sidecarKey")),
        "inputKey": _text(item.get("videoKey") or item.get("videoUrl")),
        "outputBucket": bucket,
        "outputPrefix": _text(prefix),
        "cost": float(cost) if isinstance(cost, int | float) else None,
        "costEstimate": float(estimate) if isinstance(estimate, int | float) else None,
        "waitingFor": job.waiting_for,
        "timings": {
            "createdAt": _text(item.get("createdAt")),
            "submittedAt": _text(item.get("submittedAt")),
            "finishedAt": _text(finished),
            "elapsedSeconds": _seconds_between(item.get("createdAt"), finished or item.get("updatedAt")),
        },
        "history": history,
        "providersTried": [
            {
                "provider": str(entry["provider"]),
                "model": _text(entry.get("model")),
                "reason": _text(entry.get("reason")) or "",
                "code": _text(entry.get("code")),
                "at": _text(entry.get("at")),
            }
            for entry in job.providers_tried
            if entry.get("provider")
        ],
        "error": _error(error) if isinstance(error, dict) else None,
        "outputs": outputs,
    }


def _error(record: dict[str, Any]) -> dict[str, Any]:
    """The failed job's error as ``schemas.status.StatusError`` has it (a missing field defaulted)."""
    return {
        "code": _text(record.get("code")) or "unknown",
        "message": _text(record.get("message")) or "",
        "stage": _text(record.get("stage")) or "",
        "retryable": bool(record.get("retryable")),
        "hint": _text(record.get("hint")) or "",
    }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _seconds_between(start: object, end: object) -> float | None:
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    try:
        delta = datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round(delta.total_seconds(), 3)
