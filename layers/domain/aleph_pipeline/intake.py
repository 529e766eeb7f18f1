"""From an object landing in the input bucket to exactly one provider submission."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

from . import storage
from .config import get_settings
from .errors import STAGE_INTAKE, JobError, TransientError
from .jobs import JobState, JobStore, epoch_after
from .keys import InputKey, classify, job_id_for, output_prefix, resolve_relative
from .log import logger
from .outputs import fail_job, write_error_json
from .providers import ProviderError, SubmitRequest, VideoInfo, get_provider
from .sidecar import MAX_SIDECAR_BYTES, Sidecar, parse_sidecar, sidecar_too_large


@dataclass(frozen=True)
class VideoSource:
    """The video a job edits: a key in the input bucket or an https URL."""

    extension: str
    key: str | None = None
    url: str | None = None
    info: storage.ObjectInfo | None = None


def handle_object_created(bucket: str, key: str, receive_count: int = 1) -> None:
    """Entry point for one S3 ObjectCreated record (the key already URL-decoded)."""
    settings = get_settings()
    if not key.startswith(settings.input_prefix):
        logger.info("ignored: outside the input prefix", extra={"key": key})
        return
    input_key = classify(key)
    if input_key.kind == "sidecar":
        _on_sidecar(JobStore(), bucket, input_key, receive_count)
    elif input_key.kind == "video":
        _on_video(JobStore(), bucket, input_key, receive_count)
    else:
        logger.info("ignored: neither a sidecar nor a video", extra={"key": key})


def _on_sidecar(store: JobStore, bucket: str, sidecar_key: InputKey, receive_count: int) -> None:
    settings = get_settings()
    info = storage.head(bucket, sidecar_key.key)
    if info is None:
        logger.info("sidecar gone before it was read", extra={"key": sidecar_key.key})
        return
    job_id = job_id_for(bucket, sidecar_key.key, info.version_marker)
    logger.thread_safe_append_keys(job_id=job_id)
    job, created = store.create(
        job_id,
        {
            "inputBucket": bucket,
            "sidecarKey": sidecar_key.key,
            "sidecarETag": info.etag,
            "sidecarVersion": info.version_marker,
            "outputPrefix": output_prefix(sidecar_key.key, settings.input_prefix, job_id),
            "pairingDeadline": epoch_after(settings.pairing_timeout_seconds),
        },
    )
    if not created:
        logger.info("sidecar event repeated", extra={"state": job.state})
    if job.state == JobState.FAILED:
        write_error_json(job)  # a redelivery after a crash between the two writes
    if job.state != JobState.RECEIVED or job.submission_claimed:
        return
    _advance(store, job_id, info, receive_count)


def _on_video(store: JobStore, bucket: str, video_key: InputKey, receive_count: int) -> None:
    # Sidecars that arrived first left a note under the video's key (named video) or stem.
    for job_id in store.waiters(bucket, [video_key.key, video_key.stem]):
        job = store.get(job_id)
        if job is None or job.state != JobState.RECEIVED or job.submission_claimed:
            continue
        logger.thread_safe_append_keys(job_id=job_id)
        info = storage.head(bucket, job.item["sidecarKey"])
        if info is None or info.etag != job.item["sidecarETag"]:
            fail_job(
                store,
                job_id,
                JobError("sidecar_replaced", "the sidecar was replaced or deleted before its video arrived; the new upload is a new job", STAGE_INTAKE),
            )
            continue
        _advance(store, job_id, info, receive_count)


def _advance(store: JobStore, job_id: str, sidecar_info: storage.ObjectInfo, receive_count: int) -> None:
    """Validate everything that can be checked for free, then submit once."""
    settings = get_settings()
    if sidecar_info.size > MAX_SIDECAR_BYTES:
        # Only the first MAX_SIDECAR_BYTES + 1 bytes would be read: name the real size.
        fail_job(store, job_id, sidecar_too_large(sidecar_info.size), unless_claimed=True)
        return
    raw = storage.read_bytes(sidecar_info, MAX_SIDECAR_BYTES)
    if raw is None:
        fail_job(
            store, job_id, JobError("sidecar_replaced", "the sidecar changed or was deleted while it was being read; the new upload is a new job", STAGE_INTAKE)
        )
        return
    try:
        sidecar, _document = parse_sidecar(raw)
        provider = get_provider(sidecar.provider or settings.default_provider)
        model = provider.resolve_model(sidecar)
        provider.check(sidecar, model, None)
        video = _find_video(store, job_id, sidecar_info, sidecar)
        if video is None:
            logger.info("sidecar waits for its video")
            return
        read_range = partial(storage.read_range, video.info) if video.info else None
        provider.check(sidecar, model, VideoInfo(video.extension, video.info.size if video.info else None, read_range))
        reference_urls = tuple(_image_url(sidecar_info, ref) for ref in sidecar.reference_images or ())
        frame_urls = tuple(_image_url(sidecar_info, entry if isinstance(entry, str) else entry.image) for entry in sidecar.frame_images or ())
    except JobError as error:
        fail_job(store, job_id, error, unless_claimed=True)
        return

    details: dict[str, Any] = {
        "provider": provider.id,
        "model": model,
        "sidecarJson": raw.decode("utf-8-sig"),
        "expectedResults": sidecar.number_results or 1,
    }
    if video.info is not None:
        details.update(videoKey=video.info.key, videoETag=video.info.etag, videoSize=video.info.size)
    else:
        details["videoUrl"] = video.url
    if not store.update_details(job_id, details):
        logger.info("another attempt is submitting this job")
        return
    _submit_once(
        store,
        job_id=job_id,
        provider_id=provider.id,
        model=model,
        sidecar=sidecar,
        video=video,
        reference_urls=reference_urls,
        frame_urls=frame_urls,
        receive_count=receive_count,
    )


def _find_video(store: JobStore, job_id: str, sidecar_info: storage.ObjectInfo, sidecar: Sidecar) -> VideoSource | None:
    settings = get_settings()
    bucket = sidecar_info.bucket
    if sidecar.video is not None and "://" in sidecar.video:
        return _video_url(sidecar.video)
    if sidecar.video is not None:
        key = resolve_relative(sidecar_info.key, sidecar.video, settings.input_prefix)
        if key is None:
            raise JobError("invalid_sidecar", f"field `video`: `{sidecar.video}` is not a usable key (no `..`, absolute paths or empty segments)", STAGE_INTAKE)
        video_key = classify(key)
        if video_key.kind != "video":
            raise JobError("video_unsupported", f"`{key}` is not a video: use one of .mp4, .mov, .webm, .avi, .m4v", STAGE_INTAKE)
        wait_ref = key

        def lookup() -> VideoSource | None:
            info = storage.head(bucket, key)
            return VideoSource(video_key.extension, key=key, info=info) if info else None
    else:
        stem = classify(sidecar_info.key).stem
        wait_ref = stem

        def lookup() -> VideoSource | None:
            videos = [classify(k) for k in storage.list_siblings(bucket, stem)]
            videos = [v for v in videos if v.kind == "video" and v.stem == stem]
            if len(videos) > 1:
                names = ", ".join(sorted(v.key for v in videos))
                raise JobError("invalid_sidecar", f"several videos match this sidecar ({names}); name one with `video`", STAGE_INTAKE)
            if not videos:
                return None
            info = storage.head(bucket, videos[0].key)
            return VideoSource(videos[0].extension, key=videos[0].key, info=info) if info else None

    found = lookup()
    if found is not None:
        return found
    # Leave a note for the video's event, then look once more: whichever of the two events is
    # handled second sees the other's work, so the pair is never missed.
    store.add_waiter(bucket, wait_ref, job_id, epoch_after(settings.pairing_timeout_seconds + 86400))
    found = lookup()
    if found is None:
        store.update_details(job_id, {"awaitingVideo": wait_ref if sidecar.video else f"{wait_ref}.<mp4|mov|webm|avi|m4v>"})
    return found


def _video_url(url: str) -> VideoSource:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise JobError("invalid_sidecar", f"field `video`: only https URLs are accepted, not `{parts.scheme}://`", STAGE_INTAKE)
    extension = classify(parts.path or "/x").extension
    if extension not in ("mp4", "mov", "webm", "avi", "m4v"):
        raise JobError("video_unsupported", "field `video`: the URL's path must end in .mp4, .mov, .webm, .avi or .m4v", STAGE_INTAKE)
    return VideoSource(extension, url=url)


def _image_url(sidecar_info: storage.ObjectInfo, reference: str) -> str:
    """An image (``referenceImages`` or ``frameImages``) given as a key becomes a presigned URL;
    an https URL passes as it is."""
    if "://" in reference:
        if urlsplit(reference).scheme != "https":
            raise JobError("invalid_sidecar", "image URLs must be https", STAGE_INTAKE)
        return reference
    settings = get_settings()
    key = resolve_relative(sidecar_info.key, reference, settings.input_prefix)
    if key is None or storage.head(sidecar_info.bucket, key) is None:
        raise JobError("invalid_sidecar", f"image `{reference}` was not found in the input bucket", STAGE_INTAKE)
    return storage.presign_get(sidecar_info.bucket, key, settings.presigned_url_ttl_seconds)


def _submit_once(
    store: JobStore,
    *,
    job_id: str,
    provider_id: str,
    model: str,
    sidecar: Sidecar,
    video: VideoSource,
    reference_urls: tuple[str, ...],
    frame_urls: tuple[str, ...],
    receive_count: int,
) -> None:
    settings = get_settings()
    token = secrets.token_urlsafe(32)
    claim = store.claim_submission(job_id, token, epoch_after(settings.job_deadline_seconds))
    if claim is None:
        logger.info("submission already claimed")
        return
    video_url = video.url or storage.presign_get(video.info.bucket, video.info.key, settings.presigned_url_ttl_seconds)  # type: ignore[union-attr]
    callback_url = f"{settings.callback_api_url}/callbacks/{quote(provider_id)}/{job_id}?token={token}"
    request = SubmitRequest(job_id, sidecar, model, video_url, reference_urls, callback_url, frame_urls)
    provider = get_provider(provider_id)
    try:
        task_id = provider.submit(request)
    except ProviderError as exc:
        if exc.kind == "ambiguous":
            # Never resubmit: the callback (it carries our job id) or the poller settles it.
            logger.warning("submission outcome unknown; waiting for the provider", extra={"reason": exc.message})
            return
        if exc.kind == "retryable" and receive_count < settings.submit_max_attempts:
            store.release_claim(job_id, claim)
            raise TransientError(exc.message) from exc
        fail_job(store, job_id, exc.to_job_error())
        return
    except JobError as error:
        # Raised before anything was sent (e.g. no API key configured).
        if error.retryable and receive_count < settings.submit_max_attempts:
            store.release_claim(job_id, claim)
            raise TransientError(error.message) from error
        fail_job(store, job_id, error)
        return
    store.mark_submitted(job_id, task_id)
    logger.info("submitted", extra={"provider": provider_id, "model": model, "provider_task_id": task_id})
