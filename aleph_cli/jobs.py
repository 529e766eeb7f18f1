"""What the CLI does, as functions: upload a pair, find and follow its job, read its error, fetch its outputs.

A job's id is the pipeline's own (``aleph_pipeline.keys.job_id_for`` over the sidecar object's
identity), so the CLI knows the job it started without searching for it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aleph_cli.errors import CliError
from aleph_cli.stack import StackInfo
from aleph_pipeline.errors import JobError
from aleph_pipeline.jobs import Job
from aleph_pipeline.keys import VIDEO_EXTENSIONS, job_id_for, variant_job_id
from aleph_pipeline.storage import ObjectInfo

STATES = ("RECEIVED", "SUBMITTED", "SUCCEEDED", "COMPLETED")  # the way forward; FAILED can follow any
TERMINAL = frozenset({"COMPLETED", "FAILED"})
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Submitted:
    job_id: str  # the first job's (a sidecar with `prompts` makes one job per prompt)
    video_key: str
    sidecar_key: str
    job_ids: tuple[str, ...] = ()  # every job of the sidecar, in prompt order


def upload_pair(stack: StackInfo, video: Path, sidecar: Mapping[str, Any], *, name: str | None = None, folder: str = "") -> Submitted:
    """Upload ``video`` then its sidecar (last, so the job starts with both in place); return the job's id."""
    if not video.is_file():
        raise CliError(f"{video}: no such file")
    extension = video.suffix.lower().lstrip(".")
    if extension not in VIDEO_EXTENSIONS:
        raise CliError(f"{video}: not a video the pipeline takes (.{extension}); use one of: {', '.join(VIDEO_EXTENSIONS)}")
    if not sidecar.get("prompt") and not sidecar.get("prompts"):
        raise CliError("a prompt is needed (--prompt, or --prompts for variants)")
    folder = folder.strip("/")
    stem = f"{stack.input_prefix}{folder + '/' if folder else ''}{name or video.stem}"
    video_key, sidecar_key = f"{stem}{video.suffix}", f"{stem}.json"
    stack.s3.upload_file(str(video), stack.input_bucket, video_key)
    stack.s3.put_object(
        Bucket=stack.input_bucket, Key=sidecar_key, Body=json.dumps(dict(sidecar), ensure_ascii=False).encode("utf-8"), ContentType="application/json"
    )
    head = stack.s3.head_object(Bucket=stack.input_bucket, Key=sidecar_key)
    info = ObjectInfo(stack.input_bucket, sidecar_key, int(head["ContentLength"]), head["ETag"].strip('"'), head["LastModified"], head.get("VersionId"))
    ids = sidecar_job_ids(stack.input_bucket, sidecar_key, info.version_marker, sidecar)
    return Submitted(ids[0], video_key, sidecar_key, ids)


def sidecar_job_ids(bucket: str, sidecar_key: str, version_marker: str, sidecar: Mapping[str, Any]) -> tuple[str, ...]:
    """The ids of the jobs the pipeline makes for a sidecar: one per prompt of ``prompts``, or one."""
    from aleph_pipeline.sidecar import variant_prompts

    try:
        prompts = variant_prompts(dict(sidecar))
    except JobError as exc:
        raise CliError(exc.message) from exc
    if prompts is None:
        return (job_id_for(bucket, sidecar_key, version_marker),)
    return tuple(variant_job_id(bucket, sidecar_key, version_marker, index) for index in range(len(prompts)))


def sidecar_jobs(stack: StackInfo, sidecar_key: str) -> list[dict[str, Any]]:
    """Every job made from the sidecar ``sidecar_key`` (any upload of it), variants in prompt
    order: what to compare when a sidecar has ``prompts``."""
    kwargs: dict[str, Any] = {"FilterExpression": "sidecarKey = :key", "ExpressionAttributeValues": {":key": sidecar_key}, "ConsistentRead": True}
    items = [item for page in _pages(stack.table.scan, kwargs) for item in page if "status" in item]
    items.sort(key=lambda item: (str(item.get("createdAt", "")), int(item.get("variantIndex", 0))))
    return [Job(item).to_manifest() for item in items]


def get_job(stack: StackInfo, job_id: str) -> dict[str, Any] | None:
    item = stack.table.get_item(Key={"jobId": job_id}, ConsistentRead=True).get("Item")
    return Job(item).to_manifest() if item and "status" in item else None


def require_job(stack: StackInfo, job_id: str) -> dict[str, Any]:
    job = get_job(stack, job_id)
    if job is None:
        raise CliError(f"no job {job_id} in {stack.name}")
    return job


def list_jobs(stack: StackInfo, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first. With ``state``, from the table's ``by-status`` index (status + updatedAt)."""
    items: list[dict[str, Any]] = []
    if state:
        kwargs: dict[str, Any] = {
            "IndexName": "by-status",
            "KeyConditionExpression": "#s = :s",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":s": state},
            "ScanIndexForward": False,
        }
        for page in _pages(stack.table.query, kwargs):
            items.extend(page)
            if len(items) >= limit:
                break
    else:
        kwargs = {"FilterExpression": "attribute_exists(#s)", "ExpressionAttributeNames": {"#s": "status"}}
        for page in _pages(stack.table.scan, kwargs):
            items.extend(page)
        items.sort(key=lambda item: str(item.get("updatedAt", "")), reverse=True)
    return [Job(item).to_manifest() for item in items[:limit]]


def waiting_for(job: Mapping[str, Any] | None) -> str | None:
    """Why a RECEIVED job waits, as the status API says it."""
    return Job(dict(job)).waiting_for if job and "status" in job else None


def watch(
    stack: StackInfo, job_id: str, *, timeout: float = 900.0, on_change: Callable[[str, float, dict[str, Any] | None], None] | None = None
) -> dict[str, Any]:
    """Poll the job until it is COMPLETED or FAILED; call ``on_change(state, elapsed, job)`` on each new state.

    Before the job exists its state is ``WAITING`` (the pipeline has not read the sidecar yet).
    Raises ``CliError`` after ``timeout`` seconds.
    """
    started = time.monotonic()
    last: str | None = None
    while True:
        job = get_job(stack, job_id)
        state = str(job["status"]) if job else "WAITING"
        elapsed = time.monotonic() - started
        # A RECEIVED job says what it waits for (its video, a provider that refused, an unanswered submit).
        seen = f"{state}|{waiting_for(job)}"
        if seen != last:
            last = seen
            if on_change:
                on_change(state, elapsed, job)
        if job is not None and state in TERMINAL:
            return job
        if elapsed >= timeout:
            raise CliError(f"job {job_id} is still {state} after {timeout:g} s (`aleph watch {job_id}` goes on following it)")
        time.sleep(POLL_SECONDS)


def error_of(stack: StackInfo, job: Mapping[str, Any]) -> dict[str, Any]:
    """A failed job's ``error.json`` (or, until it is written, the error on the job)."""
    key = f"{job.get('outputPrefix', '')}error.json"
    try:
        body = stack.s3.get_object(Bucket=stack.output_bucket, Key=key)["Body"].read()
        document = json.loads(body)
        if isinstance(document, dict):
            return document
    except Exception as exc:
        if _status(exc) not in (403, 404) and not isinstance(exc, ValueError):
            raise
    error = job.get("error")
    return dict(error) if isinstance(error, Mapping) else {"code": "unknown", "message": "the job failed without a recorded reason"}


def describe_error(error: Mapping[str, Any]) -> str:
    return f"{error.get('code', 'unknown')}: {error.get('message', '')}"


def output_keys(stack: StackInfo, job: Mapping[str, Any]) -> list[str]:
    prefix = str(job.get("outputPrefix") or "")
    if not prefix:
        return []
    keys: list[str] = []
    for page in stack.s3.get_paginator("list_objects_v2").paginate(Bucket=stack.output_bucket, Prefix=prefix):
        keys.extend(entry["Key"] for entry in page.get("Contents", []))
    return sorted(keys)


def result_location(stack: StackInfo, job: Mapping[str, Any]) -> str:
    """``s3://`` address of the (first) result, or of the job's folder when it has none."""
    results = [o["key"] for o in job.get("outputs") or [] if isinstance(o, Mapping) and str(o.get("key", "")).rsplit("/", 1)[-1].startswith("result")]
    key = results[0] if results else str(job.get("outputPrefix") or "")
    return f"s3://{stack.output_bucket}/{key}"


def download(stack: StackInfo, job: Mapping[str, Any], folder: Path) -> list[Path]:
    """Every file the job left in the output bucket, into ``folder`` (created)."""
    keys = output_keys(stack, job)
    if not keys:
        raise CliError(f"job {job['jobId']} is {job['status']} and has no outputs yet")
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for key in keys:
        target = folder / key.rsplit("/", 1)[-1]
        stack.s3.download_file(stack.output_bucket, key, str(target))
        saved.append(target)
    return saved


def elapsed_seconds(job: Mapping[str, Any]) -> float | None:
    from datetime import datetime

    start, end = job.get("createdAt"), job.get("updatedAt")
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    return (datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()


def _pages(operation: Callable[..., dict[str, Any]], kwargs: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    while True:
        answer = operation(**kwargs)
        yield list(answer.get("Items", []))
        if "LastEvaluatedKey" not in answer:
            return
        kwargs = {**kwargs, "ExclusiveStartKey": answer["LastEvaluatedKey"]}


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(code) if code else None
    return None
