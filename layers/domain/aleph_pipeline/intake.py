"""From an object landing in the input bucket to exactly one provider submission.

Each event is handled in three steps, so that what the pipeline does can be read (and tested) in
one place:

- ``observe`` reads what the event needs: the job, whether the sidecar key still holds the
  version the job was made from, the sidecar's content and every check that costs nothing (the
  provider's limits, the video's container), and the video if it is there;
- ``decide`` is a pure function from those facts to one action: do nothing, rewrite a lost
  ``error.json``, fail with a reason, retry the event later, wait for the video, or submit;
- ``act`` does that action's one conditional write and its one side effect. A submission is
  claimed (with everything intake found) in one conditional write before the provider is called,
  and the provider's answer decides what follows: only an answer that says the request was not
  taken gives the claim back for a retry; an ambiguous one keeps it, and the job is never sent
  again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any
from urllib.parse import SplitResult, quote, unquote_plus, urlsplit

from . import pacing, polling, storage
from .config import get_settings
from .errors import STAGE_INTAKE, JobError, TransientError
from .jobs import Claim, Job, JobState, JobStore, epoch_after
from .keys import InputKey, classify, job_id_for, output_prefix, resolve_relative
from .log import logger
from .outputs import fail_job, write_error_json
from .providers import Provider, ProviderError, SubmitRequest, VideoInfo, get_provider
from .sidecar import MAX_SIDECAR_BYTES, Sidecar, parse_sidecar, sidecar_too_large

# Time a submission may take once claimed: the provider's connect and read timeouts, and a margin
# for the writes around it. An event is not started with less time left (the function would be
# cut off with the request in flight).
CONNECT_SECONDS = 5.0
MARGIN_SECONDS = 10.0

SIDECAR_REPLACED = JobError("sidecar_replaced", "the sidecar was replaced or deleted before the job was submitted; the new upload is a new job", STAGE_INTAKE)


def seconds_needed_to_submit() -> float:
    return get_settings().provider_read_timeout_seconds + CONNECT_SECONDS + MARGIN_SECONDS


@dataclass(frozen=True)
class VideoSource:
    """The video a job edits: a key in the input bucket or an https URL."""

    extension: str
    key: str | None = None
    url: str | None = None
    info: storage.ObjectInfo | None = None


@dataclass(frozen=True)
class SubmitPlan:
    """Everything a submission needs, all of it checked."""

    provider: Provider
    model: str
    sidecar: Sidecar
    sidecar_json: str
    video: VideoSource
    reference_urls: tuple[str, ...]
    frame_urls: tuple[str, ...]


@dataclass(frozen=True)
class IntakeFacts:
    """What ``observe`` found; the only input of ``decide``."""

    state: JobState
    claimed: bool = False
    sidecar_current: bool = True  # the sidecar key still holds the version the job was made from
    problem: JobError | None = None  # the first check that failed
    attempts_left: bool = True  # the event may be delivered again (receive count below the limit)
    plan: SubmitPlan | None = None  # set when everything is here and checked
    awaiting: str | None = None  # the video the sidecar waits for


class Act(StrEnum):
    NOTHING = "nothing"
    REWRITE_ERROR = "rewrite_error"
    FAIL = "fail"
    RETRY = "retry"
    WAIT = "wait"
    SUBMIT = "submit"


@dataclass(frozen=True)
class Action:
    act: Act
    reason: str = ""
    error: JobError | None = None


def decide(facts: IntakeFacts) -> Action:
    """The one decision of intake, from facts to action (no I/O)."""
    if facts.state == JobState.FAILED:
        return Action(Act.REWRITE_ERROR, "a redelivery after a crash between the FAILED write and error.json")
    if facts.state != JobState.RECEIVED:
        return Action(Act.NOTHING, f"the job is {facts.state.value} already")
    if facts.claimed:
        return Action(Act.NOTHING, "a submission is claimed already; it is never sent twice")
    if not facts.sidecar_current:
        return Action(Act.FAIL, error=SIDECAR_REPLACED)
    if facts.problem is not None:
        if facts.problem.retryable and facts.attempts_left:
            return Action(Act.RETRY, facts.problem.message)
        return Action(Act.FAIL, error=facts.problem)
    if facts.plan is None:
        return Action(Act.WAIT, f"awaiting the video {facts.awaiting}")
    return Action(Act.SUBMIT)


def object_created_records(body: str) -> list[tuple[str, str]]:
    """The (bucket, key) of each ObjectCreated record in an S3 notification (an SQS message body),
    keys URL-decoded; [] for S3's test event. Raises ValueError for a body that is not one."""
    notification = json.loads(body)
    if not isinstance(notification, dict):
        raise ValueError("the message is not a JSON object")
    if notification.get("Event") == "s3:TestEvent":
        return []  # S3 sends it when notifications are configured
    found: list[tuple[str, str]] = []
    for record in notification.get("Records") or []:
        if isinstance(record, dict) and str(record.get("eventName", "")).startswith("ObjectCreated"):
            # S3 URL-encodes keys in events
            found.append((str(record["s3"]["bucket"]["name"]), unquote_plus(str(record["s3"]["object"]["key"]))))
    return found


def handle_object_created(bucket: str, key: str, receive_count: int = 1, time_left: Callable[[], float] | None = None) -> None:
    """Entry point for one S3 ObjectCreated record (the key already URL-decoded).

    ``time_left`` (seconds) lets a submission be refused before it starts when the function would
    be cut off during it; the event is then retried (TransientError).
    """
    settings = get_settings()
    if not key.startswith(settings.input_prefix):
        logger.info("ignored: outside the input prefix", extra={"key": key})
        return
    input_key = classify(key)
    store = JobStore()
    if input_key.kind == "sidecar":
        _on_sidecar(store, bucket, input_key, receive_count, time_left)
    elif input_key.kind == "video":
        _on_video(store, bucket, input_key, receive_count, time_left)
    else:
        logger.info("ignored: neither a sidecar nor a video", extra={"key": key})


def _on_sidecar(store: JobStore, bucket: str, sidecar_key: InputKey, receive_count: int, time_left: Callable[[], float] | None) -> None:
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
    _run(store, job, receive_count, time_left, sidecar_info=info)


def _on_video(store: JobStore, bucket: str, video_key: InputKey, receive_count: int, time_left: Callable[[], float] | None) -> None:
    # Sidecars that arrived first left a note under the video's key (named video) or stem.
    for job_id in store.waiters(bucket, [video_key.key, video_key.stem]):
        job = store.get(job_id)
        if job is None:
            continue
        logger.thread_safe_append_keys(job_id=job_id)
        _run(store, job, receive_count, time_left)


def _run(store: JobStore, job: Job, receive_count: int, time_left: Callable[[], float] | None, sidecar_info: storage.ObjectInfo | None = None) -> None:
    facts = observe(store, job, receive_count, sidecar_info)
    action = decide(facts)
    logger.info("intake decided", extra={"action": action.act.value, "reason": action.reason or (action.error.code if action.error else "")})
    act(store, job, facts, action, time_left)


def handle_retry(job_id: str, receive_count: int = 1, time_left: Callable[[], float] | None = None) -> None:
    """A job's own message (``{"retryJob": id}``, see ``pacing``): its provider slot has come."""
    store = JobStore()
    job = store.get(job_id)
    if job is None:
        logger.info("retry message for a job that does not exist", extra={"job_id": job_id})
        return
    logger.thread_safe_append_keys(job_id=job_id)
    _run(store, job, receive_count, time_left)


def reconsider(store: JobStore, job: Job, time_left: Callable[[], float] | None = None) -> None:
    """Run intake again for a job the reconciler found waiting too long (its event may have been
    lost to the dead-letter queue after repeated infrastructure errors). The same claim protects
    it: a job that was sent is never sent again."""
    try:
        _run(store, job, 1, time_left)
    except TransientError as exc:
        logger.info("reconsidered job still waits", extra={"reason": str(exc)})


# ---- observe -------------------------------------------------------------------------------------


def observe(store: JobStore, job: Job, receive_count: int, sidecar_info: storage.ObjectInfo | None = None) -> IntakeFacts:
    """Read what the decision needs, stopping at the first fact that settles it."""
    settings = get_settings()
    attempts_left = receive_count < settings.submit_max_attempts
    if job.state != JobState.RECEIVED or job.submission_claimed:
        return IntakeFacts(job.state, claimed=job.submission_claimed)
    bucket, key = job.item.get("inputBucket"), job.item.get("sidecarKey")
    info = sidecar_info or (storage.head(str(bucket), str(key)) if bucket and key else None)
    # The same version marker the job id is made from (an ETag alone misses a re-upload of the same bytes).
    if info is None or info.version_marker != job.item.get("sidecarVersion"):
        return IntakeFacts(job.state, sidecar_current=False)
    if info.size > MAX_SIDECAR_BYTES:
        # Only the first MAX_SIDECAR_BYTES + 1 bytes would be read: name the real size.
        return IntakeFacts(job.state, problem=sidecar_too_large(info.size), attempts_left=attempts_left)
    raw = storage.read_bytes(info, MAX_SIDECAR_BYTES)
    if raw is None:
        return IntakeFacts(job.state, sidecar_current=False)
    try:
        sidecar, _document = parse_sidecar(raw)
        provider = get_provider(sidecar.provider or settings.default_provider)
        model = provider.resolve_model(sidecar)
        provider.check(sidecar, model, None)
        video, awaiting = _find_video(store, job.id, info, sidecar)
        if video is None:
            return IntakeFacts(job.state, awaiting=awaiting, attempts_left=attempts_left)
        video_info = VideoInfo(video.extension, video.info.size if video.info else None, partial(storage.read_range, video.info) if video.info else None)
        provider.check(sidecar, model, video_info)  # the provider's formats and limits first: the plainest reason
        video_info.check_container()  # a file that is not the video its name says stops here, before any provider
        reference_urls = tuple(_image_url(info, ref) for ref in sidecar.reference_images or ())
        frame_urls = tuple(_image_url(info, entry if isinstance(entry, str) else entry.image) for entry in sidecar.frame_images or ())
        provider.api_key()  # read before the claim: a missing key fails here, not after a claim
    except JobError as error:
        return IntakeFacts(job.state, problem=error, attempts_left=attempts_left)
    plan = SubmitPlan(provider, model, sidecar, raw.decode("utf-8-sig"), video, reference_urls, frame_urls)
    return IntakeFacts(job.state, plan=plan, attempts_left=attempts_left)


def _find_video(store: JobStore, job_id: str, sidecar_info: storage.ObjectInfo, sidecar: Sidecar) -> tuple[VideoSource | None, str]:
    """The sidecar's video, or None and what it waits for."""
    settings = get_settings()
    bucket = sidecar_info.bucket
    if sidecar.video is not None and "://" in sidecar.video:
        return _video_url(sidecar.video), sidecar.video
    if sidecar.video is not None:
        key = resolve_relative(sidecar_info.key, sidecar.video, settings.input_prefix)
        if key is None:
            raise JobError("invalid_sidecar", f"field `video`: `{sidecar.video}` is not a usable key (no `..`, absolute paths or empty segments)", STAGE_INTAKE)
        video_key = classify(key)
        if video_key.kind != "video":
            raise JobError("video_unsupported", f"`{key}` is not a video: use one of .mp4, .mov, .webm, .avi, .m4v", STAGE_INTAKE)
        wait_ref, awaiting = key, key

        def lookup() -> VideoSource | None:
            info = storage.head(bucket, key)
            return VideoSource(video_key.extension, key=key, info=info) if info else None
    else:
        stem = classify(sidecar_info.key).stem
        wait_ref, awaiting = stem, f"{stem}.<mp4|mov|webm|avi|m4v>"

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
        return found, awaiting
    # Leave a note for the video's event, then look once more: whichever of the two events is
    # handled second sees the other's work, so the pair is never missed.
    store.add_waiter(bucket, wait_ref, job_id, epoch_after(settings.pairing_timeout_seconds + 86400))
    return lookup(), awaiting


def _split(url: str, field: str) -> SplitResult:
    """A sidecar URL read, or refused by name: an unreadable one (``https://[x``) is bad input, not a crash."""
    try:
        parts = urlsplit(url)
        _ = parts.hostname, parts.port
    except ValueError as exc:
        raise JobError("invalid_sidecar", f"field `{field}`: the URL cannot be read ({exc})", STAGE_INTAKE) from exc
    return parts


def _video_url(url: str) -> VideoSource:
    parts = _split(url, "video")
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
        if _split(reference, "referenceImages/frameImages").scheme != "https":
            raise JobError("invalid_sidecar", "image URLs must be https", STAGE_INTAKE)
        return reference
    settings = get_settings()
    key = resolve_relative(sidecar_info.key, reference, settings.input_prefix)
    if key is None or storage.head(sidecar_info.bucket, key) is None:
        raise JobError("invalid_sidecar", f"image `{reference}` was not found in the input bucket", STAGE_INTAKE)
    return storage.presign_get(sidecar_info.bucket, key, settings.presigned_url_ttl_seconds)


# ---- act -----------------------------------------------------------------------------------------


def act(store: JobStore, job: Job, facts: IntakeFacts, action: Action, time_left: Callable[[], float] | None = None) -> None:
    if action.act == Act.REWRITE_ERROR:
        write_error_json(store, job)
    elif action.act == Act.FAIL and action.error is not None:
        fail_job(store, job.id, action.error, unless_claimed=True)
    elif action.act == Act.RETRY:
        raise TransientError(action.reason)
    elif action.act == Act.WAIT:
        store.update_details(job.id, {"awaitingVideo": facts.awaiting})
    elif action.act == Act.SUBMIT and facts.plan is not None:
        _submit_once(store, job.id, facts.plan, facts.attempts_left, time_left)


def _submit_once(store: JobStore, job_id: str, plan: SubmitPlan, attempts_left: bool, time_left: Callable[[], float] | None) -> None:
    settings = get_settings()
    if time_left is not None and time_left() < seconds_needed_to_submit():
        raise TransientError("too little time left in this invocation to submit; the event is retried")
    video = plan.video
    video_url = video.url or storage.presign_get(video.info.bucket, video.info.key, settings.presigned_url_ttl_seconds)  # type: ignore[union-attr]
    details: dict[str, Any] = {
        "provider": plan.provider.id,
        "model": plan.model,
        "sidecarJson": plan.sidecar_json,
        "expectedResults": plan.sidecar.number_results or 1,
    }
    if video.info is not None:
        details.update(videoKey=video.info.key, videoETag=video.info.etag, videoSize=video.info.size)
    else:
        details["videoUrl"] = video.url
    if pacing.hold_for_slot(store, job_id, plan.provider.id):
        return  # the job waits in RECEIVED for its provider slot; a delayed message takes it up
    # The claim is the record that a request may be on its way: written before anything that can
    # be cut off, so a killed invocation leaves a claimed job the reconciler settles, never a resend.
    claim = store.claim_submission(job_id, epoch_after(settings.job_deadline_seconds), details)
    if claim is None:
        logger.info("submission already claimed")
        return
    callback_url = f"{settings.callback_api_url}/callbacks/{quote(plan.provider.id)}/{job_id}?token={claim.token}"
    request = SubmitRequest(job_id, plan.sidecar, plan.model, video_url, plan.reference_urls, callback_url, plan.frame_urls)
    try:
        task_id = plan.provider.submit(request)
    except ProviderError as exc:
        _after_refusal(store, job_id, claim, exc, attempts_left, idempotent=plan.provider.idempotent_submit)
        return
    except (JobError, TransientError) as exc:
        # Raised before anything was sent (the key could not be read just now).
        if isinstance(exc, JobError) and not (exc.retryable and attempts_left):
            if claim.sent_before:
                _await_earlier_send(store, job_id, claim, str(exc))
                return
            store.release_claim(job_id, claim.claim_id, str(exc))
            fail_job(store, job_id, exc)
            return
        store.release_claim(job_id, claim.claim_id, str(exc))
        raise TransientError(str(exc)) from exc
    moved = store.mark_submitted(job_id, task_id)
    logger.info("submitted", extra={"provider": plan.provider.id, "model": plan.model, "provider_task_id": task_id})
    if moved and not plan.provider.webhooks:
        polling.start(job_id)  # no callback will come: the job's own poll loop finds the outcome


def _after_refusal(store: JobStore, job_id: str, claim: Claim, exc: ProviderError, attempts_left: bool, *, idempotent: bool) -> None:
    if exc.kind == "ambiguous" and idempotent and attempts_left:
        # The same request again either creates the task or is answered "already taken": one task.
        store.release_claim(job_id, claim.claim_id, exc.message, may_have_reached=True)
        raise TransientError(exc.message) from exc
    if exc.kind == "ambiguous":
        # Never resubmit: the callback (it carries our job id and token) or a poll settles it,
        # or the deadline fails it as `submit_ambiguous`.
        store.note_unanswered(job_id, claim.claim_id, claim.sent_before or exc.message)
        logger.warning("submission outcome unknown; waiting for the provider", extra={"reason": exc.message})
        return
    if pacing.is_rate_limited(exc) and not claim.sent_before:  # (after an unanswered send: the path below)
        pacing.slow_down(store, job_id, claim.claim_id, exc.message)  # a 429 slows the provider down, never fails the job
        return
    if exc.kind == "retryable" and attempts_left:
        store.release_claim(job_id, claim.claim_id, exc.message)
        raise TransientError(exc.message) from exc
    if claim.sent_before:
        _await_earlier_send(store, job_id, claim, exc.message)
        return
    fail_job(store, job_id, exc.to_job_error())


def _await_earlier_send(store: JobStore, job_id: str, claim: Claim, answer: str) -> None:
    """A repeat that ends without a task id, after an earlier request went unanswered: that one
    may have made the task (and a refusal now, a 402 say, may be because it did). Never failed
    as "not taken": the job waits for the callback or a poll, or its deadline (`submit_ambiguous`)."""
    store.note_unanswered(job_id, claim.claim_id, str(claim.sent_before))
    logger.warning("a repeated submit was not taken; the earlier request may have been", extra={"reason": answer})
