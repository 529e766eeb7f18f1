"""The files a job leaves in the output bucket: results, ``job.json``, or ``error.json``."""

from __future__ import annotations

import posixpath
from typing import Any
from urllib.parse import urlsplit

from . import budget, storage
from .config import get_settings
from .errors import JobError
from .jobs import Job, JobState, JobStore
from .log import logger

VIDEO_EXTENSIONS = {"mp4", "webm", "mov"}
SIDECAR_SOURCE = "sidecar"  # a field's source in job.json when the sidecar itself gave it
IMAGE_EXTENSIONS = {"png", "jpg", "jpeg", "webp"}


def result_extension(job: Job) -> str:
    """The results' container as the sidecar asked for it (``outputFormat``), MP4 by default."""
    requested = (job.sidecar_document or {}).get("outputFormat")
    return requested.lower() if isinstance(requested, str) and requested.lower() in VIDEO_EXTENSIONS else "mp4"


def result_names(job: Job, count: int) -> list[str]:
    """``result.<ext>``, or ``result-1.<ext>`` ... when a job has several results."""
    extension = result_extension(job)
    if count == 1:
        return [f"result.{extension}"]
    return [f"result-{index}.{extension}" for index in range(1, count + 1)]


def cover_name(url: str) -> str:
    extension = posixpath.splitext(urlsplit(url).path)[1].lstrip(".").lower()
    return f"cover.{extension if extension in IMAGE_EXTENSIONS else 'jpg'}"


def fail_job(store: JobStore, job_id: str, error: JobError, *, unless_claimed: bool = False, only_from: JobState | None = None) -> None:
    """Move a job to FAILED and leave ``error.json``; repeating it rewrites the same file."""
    moved = store.mark_failed(job_id, error, unless_claimed=unless_claimed, only_from=only_from)
    job = store.get(job_id)
    if job is None or job.state != JobState.FAILED:
        # The job finished another way first (a completed job keeps its outputs).
        logger.info("job already finished; failure not recorded", extra={"job_id": job_id, "state": job.state if job else None, "error_code": error.code})
        return
    if job.reached(JobState.SUCCEEDED):
        clear_outputs(job)  # results copied before the failure must not stand beside error.json
    write_error_json(store, job)
    if never_sent(job):
        budget.release(job_id)  # nothing can be charged for it: its reservation goes back to the budgets
    if moved:
        logger.warning("job failed", extra={"job_id": job_id, "error_code": error.code, "stage": error.stage})


def never_sent(job: Job) -> bool:
    """No request of this job can have reached a provider: never submitted, no claim standing, no
    earlier send unanswered. A job that may have been sent keeps its reservation (it may be charged)."""
    return not (job.reached(JobState.SUBMITTED) or job.submission_claimed or job.sent_before)


def clear_outputs(job: Job) -> None:
    """Remove whatever finalize left under the job's folder (results, cover, job.json) but error.json."""
    bucket = get_settings().output_bucket_name
    keys = [key for key in storage.list_keys(bucket, job.output_prefix) if key != job.output_prefix + "error.json"]
    if keys:
        storage.delete_keys(bucket, keys)
        logger.info("partial outputs removed", extra={"keys": keys})


def write_error_json(store: JobStore, job: Job) -> None:
    """Write the FAILED job's ``error.json`` (again, after a cut-off invocation) and note it on the job."""
    item = job.to_manifest()
    document: dict[str, Any] = {
        **item.get("error", {}),
        "jobId": job.id,
        "sidecarKey": item.get("sidecarKey"),
        "provider": item.get("provider"),
        "model": item.get("model"),
        "providerTaskId": item.get("providerTaskId"),
        "providersTried": item.get("providersTried"),
        "failedAt": item.get("updatedAt"),
        "history": item.get("history", []),
    }
    storage.put_json(get_settings().output_bucket_name, job.output_prefix + "error.json", {k: v for k, v in document.items() if v is not None})
    store.note_error_written(job.id)


def manifest(job: Job, outputs: list[dict[str, Any]], completed_at: str) -> dict[str, Any]:
    """``job.json``: what was asked, who did it, what it cost, and where the results are."""
    item = job.to_manifest()
    history = [*item.get("history", []), {"state": JobState.COMPLETED.value, "at": completed_at}]
    source: dict[str, Any] = {"bucket": item.get("inputBucket")}
    for name, field in (("key", "videoKey"), ("etag", "videoETag"), ("size", "videoSize"), ("url", "videoUrl")):
        if item.get(field) is not None:
            source[name] = item[field]
    document: dict[str, Any] = {
        "jobId": job.id,
        "state": JobState.COMPLETED.value,
        "sidecar": job.sidecar_document,
        "fieldSources": field_sources(job),
        "metadata": (job.sidecar_document or {}).get("metadata"),
        "sidecarKey": item.get("sidecarKey"),
        "provider": item.get("provider"),
        "model": item.get("model"),
        "providerTaskId": item.get("providerTaskId"),
        # Every provider of the chain that did not take the job, and why it moved on.
        "providersTried": job.providers_tried,
        "cost": item.get("cost"),
        "costEstimate": item.get("costEstimate"),
        "source": source,
        "outputs": outputs,
        "history": history,
        "createdAt": item.get("createdAt"),
        "completedAt": completed_at,
    }
    if item.get("modelNote"):
        document["modelNote"] = item["modelNote"]  # the sidecar's model belongs to another provider of the chain
    if item.get("variantIndex") is not None:
        document["variant"] = {"index": item["variantIndex"], "count": item.get("variantCount")}  # prompts[index] of the sidecar
    return document


def field_sources(job: Job) -> dict[str, str]:
    """Where each field of the job's sidecar came from: a folder's ``_defaults.json`` key, or ``"sidecar"``."""
    recorded = job.to_manifest().get("fieldSources")
    if isinstance(recorded, dict):
        return {str(name): str(source) for name, source in recorded.items()}
    return dict.fromkeys(job.sidecar_document or {}, SIDECAR_SOURCE)  # no defaults applied: intake records none
