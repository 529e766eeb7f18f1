"""Copy a succeeded job's results into the output bucket, write ``job.json``, complete it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import lru_cache

import httpx

from . import budget, media, storage, telemetry
from .cleanup import clean_up_inputs
from .config import get_settings
from .errors import STAGE_FINALIZE, STAGE_PROVIDER, JobError, TransientError
from .jobs import Job, JobState, JobStore, now_iso
from .log import logger
from .outputs import clear_outputs, cover_name, fail_job, manifest, result_extension, result_names, write_error_json
from .providers import USER_AGENT, Provider, ProviderError, get_provider

DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


@lru_cache(maxsize=1)
def _download_client() -> httpx.Client:
    # Redirects are followed by hand so that each hop's host is checked.
    return httpx.Client(timeout=DOWNLOAD_TIMEOUT, follow_redirects=False, headers={"User-Agent": USER_AGENT})


def _result_client(extension: str, name: str) -> httpx.Client:
    """A download client whose 200 answers are checked to start the container ``extension``
    names: a result is refused at its first bytes, before any of it is written to S3."""

    def check(response: httpx.Response) -> None:
        if response.status_code == 200 and isinstance(response.stream, httpx.SyncByteStream):
            response.stream = _ContainerChecked(response.stream, extension, name)

    return httpx.Client(timeout=DOWNLOAD_TIMEOUT, follow_redirects=False, headers={"User-Agent": USER_AGENT}, event_hooks={"response": [check]})


class _ContainerChecked(httpx.SyncByteStream):
    """A result's byte stream that checks its first bytes -- bytes the copy reads anyway, so
    nothing is downloaded twice -- before passing any on."""

    def __init__(self, stream: httpx.SyncByteStream, extension: str, name: str) -> None:
        self._stream = stream
        self._extension = extension
        self._name = name

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._stream)
        head = b""
        for chunk in chunks:
            head += chunk
            if len(head) >= media.MAGIC_BYTES:
                break
        check_result_container(self._extension, head, self._name)
        if head:
            yield head
        yield from chunks

    def close(self) -> None:
        self._stream.close()


def check_result_container(extension: str, head: bytes, name: str) -> None:
    """Refuse a result whose first bytes are not the container its name (and the request) says:
    ``result.webm`` holds WebM, ``result.mov`` QuickTime, ``result.mp4`` MP4."""
    received = media.container_of(head)
    if received == extension:
        return
    asked = media.CONTAINER_NAMES.get(extension, extension.upper())
    came = media.CONTAINER_NAMES[received] if received else ("an empty file" if not head else "no video container we know")
    raise JobError(
        "result_format_mismatch",
        f"the provider sent {came} where {asked} was asked for ({name}); nothing was kept",
        STAGE_FINALIZE,
        details={"requestedFormat": extension.upper(), "receivedFormat": received.upper() if received else "unknown", "firstBytes": head[:16].hex()},
    )


def finalize_job(job_id: str) -> None:
    """Idempotent: output keys are fixed by the job, and only a SUCCEEDED job is copied.

    Only a failure of the result itself (gone, expired, refused, too large) fails the job. Any
    infrastructure error (Secrets Manager, DynamoDB, S3, the provider's status API answering 5xx)
    raises, so the stream retries the record, and then the reconciler's nudges, while the result
    can still be fetched.
    """
    store = JobStore()
    job = store.get(job_id)
    if job is not None and job.state == JobState.FAILED and job.reached(JobState.SUCCEEDED):
        # A retry after an invocation cut off between the FAILED write and error.json.
        clear_outputs(job)
        write_error_json(store, job)
        return
    if job is None or job.state != JobState.SUCCEEDED:
        logger.info("nothing to finalize", extra={"job_id": job_id, "state": job.state if job else None})
        return
    logger.thread_safe_append_keys(job_id=job_id)
    settings = get_settings()
    provider = get_provider(str(job.provider))
    result = job.to_manifest().get("result", {})
    videos: list[str] = result.get("videos", [])
    cover: str | None = result.get("cover")
    try:
        if settings.confirm_results_by_polling:
            videos, cover = _confirmed(provider, job, videos, cover)
    except JobError as error:
        if error.retryable and error.stage != STAGE_PROVIDER:
            raise TransientError(f"confirming the result failed for now: {error.message}") from error
        fail_job(store, job_id, error)
        return
    bucket = settings.output_bucket_name
    copy = {
        "allowed_hosts": provider.allowed_result_hosts,
        "allow_http": settings.allow_http_result_urls,
        "max_bytes": settings.max_result_bytes,
        "max_seconds": settings.max_result_seconds,
    }
    outputs = []
    extension = result_extension(job)
    copy_started = time.monotonic()
    try:
        for index, (url, name) in enumerate(zip(videos, result_names(job, len(videos)), strict=True)):
            key = job.output_prefix + name
            with _result_client(extension, name) as http:
                try:
                    size = storage.copy_url_to_s3(http, url, bucket, key, content_type=_video_type(name), **copy)  # type: ignore[arg-type]
                except JobError as error:  # an expired or refused link: the provider may have a fresh one
                    expired = error.details.get("httpStatus") in (403, 404, 410)
                    fresh = provider.refresh_result_url(url, task_id=job.provider_task_id, index=index) if expired else None
                    if fresh is None:
                        raise
                    size = storage.copy_url_to_s3(http, fresh, bucket, key, content_type=_video_type(name), **copy)  # type: ignore[arg-type]
            outputs.append({"key": key, "size": size})
    except JobError as error:
        fail_job(store, job_id, error)  # removes the results already copied: error.json stands alone
        return
    telemetry.copy_throughput(job_id, str(job.provider), outputs, time.monotonic() - copy_started)
    if cover:
        outputs.extend(_copy_cover(job, cover, bucket, copy))
    completed_at = now_iso()
    document = manifest(job, outputs, completed_at)
    storage.put_json(bucket, job.output_prefix + "job.json", document)
    if store.mark_completed(job_id, outputs, completed_at):
        logger.info("completed", extra={"outputs": [output["key"] for output in outputs]})
        budget.settle(job_id, str(job.provider), job.item.get("cost"))
        clean_up_inputs(store, job)  # only now: a job never loses its inputs before it is COMPLETED


def _copy_cover(job: Job, cover: str, bucket: str, copy: dict[str, object]) -> list[dict[str, object]]:
    """The cover is best effort: one that is gone or refused is left out, never a job failure."""
    key = job.output_prefix + cover_name(cover)
    try:
        size = storage.copy_url_to_s3(_download_client(), cover, bucket, key, **copy)  # type: ignore[arg-type]
    except JobError as error:
        logger.warning("cover left out", extra={"reason": error.message})
        return []
    return [{"key": key, "size": size}]


def _confirmed(provider: Provider, job: Job, videos: list[str], cover: str | None) -> tuple[list[str], str | None]:
    """The results as the provider's status API reports them to us, not as the callback said.

    A forged or mistaken success callback thus copies nothing: the job fails with the provider's
    own answer, or waits (TransientError) while the provider still reports the task running. A
    job whose task id is not known yet (its callback outran the submit answer) waits for it: an
    unconfirmed result is never copied.
    """
    task_id = job.provider_task_id or provider.own_reference(job.id)
    if not task_id:
        raise TransientError("the provider's task id is not recorded yet; the result is confirmed once it is")
    try:
        outcome = provider.poll(task_id)
    except ProviderError as exc:
        if exc.kind == "refused":
            raise JobError("result_unavailable", f"the provider could not confirm the result: {exc.message}", STAGE_FINALIZE) from exc
        raise TransientError(f"confirming the result failed: {exc.message}") from exc
    if outcome.state == "failed":
        raise outcome.error or JobError("generation_failed", "the provider reports the task failed", STAGE_PROVIDER)
    items = outcome.items
    if outcome.state == "running" or len(items) < len(videos):
        raise TransientError("the provider does not report every result yet")
    confirmed_cover = next((item.cover_url for item in items if item.cover_url), None)
    return [item.video_url for item in items], confirmed_cover or (cover if not items else None)


def _video_type(name: str) -> str:
    return {"mp4": "video/mp4", "webm": "video/webm", "mov": "video/quicktime"}.get(name.rsplit(".", 1)[-1], "application/octet-stream")
