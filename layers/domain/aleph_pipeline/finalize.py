"""Copy a succeeded job's results into the output bucket, write ``job.json``, complete it."""

from __future__ import annotations

from functools import lru_cache

import httpx

from . import storage
from .config import get_settings
from .errors import JobError
from .jobs import JobState, JobStore, now_iso
from .log import logger
from .outputs import cover_name, fail_job, manifest, result_names
from .providers import get_provider


@lru_cache(maxsize=1)
def _download_client() -> httpx.Client:
    # Redirects are followed by hand so that each hop's host is checked.
    return httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=False)


def finalize_job(job_id: str) -> None:
    """Idempotent: output keys are fixed by the job, and only a SUCCEEDED job is copied."""
    store = JobStore()
    job = store.get(job_id)
    if job is None or job.state != JobState.SUCCEEDED:
        logger.info("nothing to finalize", extra={"job_id": job_id, "state": job.state if job else None})
        return
    logger.thread_safe_append_keys(job_id=job_id)
    settings = get_settings()
    provider = get_provider(str(job.provider))
    result = job.to_manifest().get("result", {})
    videos: list[str] = result.get("videos", [])
    cover: str | None = result.get("cover")
    bucket = settings.output_bucket_name
    copy = {
        "allowed_hosts": provider.allowed_result_hosts,
        "allow_http": settings.allow_http_result_urls,
        "max_bytes": settings.max_result_bytes,
    }
    outputs = []
    try:
        for url, name in zip(videos, result_names(job, len(videos)), strict=True):
            key = job.output_prefix + name
            size = storage.copy_url_to_s3(_download_client(), url, bucket, key, content_type=_video_type(name), **copy)  # type: ignore[arg-type]
            outputs.append({"key": key, "size": size})
        if cover:
            key = job.output_prefix + cover_name(cover)
            size = storage.copy_url_to_s3(_download_client(), cover, bucket, key, **copy)  # type: ignore[arg-type]
            outputs.append({"key": key, "size": size})
    except JobError as error:
        fail_job(store, job_id, error)
        return
    completed_at = now_iso()
    document = manifest(job, outputs, completed_at)
    manifest_key = job.output_prefix + "job.json"
    storage.put_json(bucket, manifest_key, document)
    if store.mark_completed(job_id, outputs, completed_at):
        logger.info("completed", extra={"outputs": [output["key"] for output in outputs]})


def _video_type(name: str) -> str:
    return {"mp4": "video/mp4", "webm": "video/webm", "mov": "video/quicktime"}.get(name.rsplit(".", 1)[-1], "application/octet-stream")
