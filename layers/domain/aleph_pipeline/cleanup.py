"""Clean-up of a COMPLETED job's inputs (the ``InputCleanup`` stack parameter): tag or delete.

Only the sidecar and the video the job read from the input bucket are touched (a video given by
https URL is not ours). Tagging harms no other job, so it is done at once. Deleting waits for
every other job that may still read the object: a query of the status index for the
non-terminal states (RECEIVED, SUBMITTED, SUCCEEDED) -- the jobs in flight, never the table's
finished history -- finds a job that names the same sidecar (a variant of it), the same video,
or that has not chosen its video yet (it may be about to pair with this one). Any of them keeps
the object: the last job of a shared video to complete deletes it. An object uploaded again
since the job read it (another ETag) is someone's new input and is kept.

A clean-up that fails is logged and counted (``InputCleanupFailed``): it never fails the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from . import storage, telemetry
from .config import get_settings
from .jobs import STATUS_INDEX, Job, JobState, JobStore
from .keys import classify
from .log import logger

PROCESSED_TAG = ("aleph-pipeline", "processed")
JOB_ID_TAG = "aleph-job-id"
IN_FLIGHT = (JobState.RECEIVED, JobState.SUBMITTED, JobState.SUCCEEDED)
# Pages of in-flight jobs read before giving up and keeping the inputs (every read bounded).
MAX_QUERY_PAGES = 20


@dataclass
class CleanupOutcome:
    tagged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # key -> why it was kept


def clean_up_inputs(store: JobStore, job: Job) -> CleanupOutcome:
    """Tag or delete ``job``'s inputs as ``InputCleanup`` says; call only once it is COMPLETED."""
    outcome = CleanupOutcome()
    mode = get_settings().input_cleanup
    if mode == "none":
        return outcome
    try:
        if mode == "tag":
            for key in _input_keys(job):
                _tag(str(job.item["inputBucket"]), key, job.id)
                outcome.tagged.append(key)
        else:
            _delete(store, job, outcome)
    except (ClientError, BotoCoreError) as exc:
        logger.warning("input clean-up failed; the inputs stay", extra={"mode": mode, "reason": str(exc)[:300]})
        telemetry.input_cleanup_failed(job.id, mode)
        return outcome
    logger.info("inputs cleaned up", extra={"mode": mode, "tagged": outcome.tagged, "deleted": outcome.deleted, "kept": outcome.kept})
    return outcome


def _input_keys(job: Job) -> list[str]:
    """The sidecar and the video the job read from the input bucket (no URL video)."""
    keys = [str(job.item["sidecarKey"])]
    if job.item.get("videoKey"):
        keys.append(str(job.item["videoKey"]))
    return keys


def _tag(bucket: str, key: str, job_id: str) -> None:
    s3 = storage.s3_client()
    # PutObjectTagging replaces the whole set: the object's own tags are kept beside ours.
    tags = {tag["Key"]: tag["Value"] for tag in s3.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])}
    tags.update({PROCESSED_TAG[0]: PROCESSED_TAG[1], JOB_ID_TAG: job_id})
    s3.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})


def _delete(store: JobStore, job: Job, outcome: CleanupOutcome) -> None:
    bucket = str(job.item["inputBucket"])
    sidecar_key = str(job.item["sidecarKey"])
    video_key = str(job.item["videoKey"]) if job.item.get("videoKey") else None
    reasons = _still_used(store, job, bucket, sidecar_key, video_key)
    expected = {sidecar_key: job.item.get("sidecarETag"), **({video_key: job.item.get("videoETag")} if video_key else {})}
    for key, etag in expected.items():
        if key in reasons:
            outcome.kept[key] = reasons[key]
            continue
        info = storage.head(bucket, key)
        if info is None:
            outcome.kept[key] = "already gone"
        elif info.etag != etag:
            outcome.kept[key] = "uploaded again since the job read it"
        else:
            storage.s3_client().delete_object(Bucket=bucket, Key=key)
            outcome.deleted.append(key)


def _still_used(store: JobStore, job: Job, bucket: str, sidecar_key: str, video_key: str | None) -> dict[str, str]:
    """The inputs another job in flight may still read, each with the job that keeps it."""
    used: dict[str, str] = {}
    others, complete = _in_flight(store, bucket, sidecar_key, video_key)
    for other in others:
        if other.id == job.id:
            continue
        item = other.item
        if item.get("sidecarKey") == sidecar_key:
            used.setdefault(sidecar_key, f"job {other.id} reads the same sidecar")
        if video_key is None:
            continue
        if item.get("videoKey") == video_key:
            used.setdefault(video_key, f"job {other.id} uses the same video")
        elif not item.get("videoKey") and not item.get("videoUrl") and _may_pair(item.get("awaitingVideo"), video_key):
            used.setdefault(video_key, f"job {other.id} has not chosen its video yet")
    if not complete:
        for key in (sidecar_key, video_key):
            if key:
                used.setdefault(key, "too many jobs in flight to be sure no other uses it")
    return used


def _may_pair(awaiting: Any, video_key: str) -> bool:
    """Whether a job not yet paired may take ``video_key``: it waits for that key or its stem, or
    has not read its sidecar yet (nothing recorded)."""
    if not isinstance(awaiting, str) or not awaiting:
        return True
    return awaiting == video_key or awaiting.startswith(classify(video_key).stem + ".<")


def _in_flight(store: JobStore, bucket: str, sidecar_key: str, video_key: str | None) -> tuple[list[Job], bool]:
    """In-flight jobs of ``bucket`` that name the sidecar or the video, or have no video yet, and
    whether that is all of them."""
    names = {"#status": "status"}
    values: dict[str, Any] = {":bucket": bucket, ":sidecar": sidecar_key}
    conditions = ["sidecarKey = :sidecar"]
    if video_key:
        values[":video"] = video_key
        conditions += ["videoKey = :video", "(attribute_not_exists(videoKey) AND attribute_not_exists(videoUrl))"]
    found: list[Job] = []
    pages = 0
    for state in IN_FLIGHT:
        query: dict[str, Any] = {
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "#status = :state",
            "FilterExpression": f"inputBucket = :bucket AND ({' OR '.join(conditions)})",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {**values, ":state": state.value},
        }
        while True:
            pages += 1
            page = store.table.query(**query)
            found.extend(Job(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            if pages >= MAX_QUERY_PAGES:
                return found, False
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return found, True
