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
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any
from urllib.parse import SplitResult, quote, unquote_plus, urlsplit

from . import budget, defaults, inflight, pacing, polling, storage
from .config import get_settings
from .errors import STAGE_INTAKE, JobError, TransientError
from .jobs import Claim, Job, JobState, JobStore, epoch_after
from .keys import InputKey, classify, job_id_for, output_prefix, resolve_relative, variant_job_id
from .log import logger
from .outputs import SIDECAR_SOURCE, fail_job, write_error_json
from .providers import Provider, ProviderError, SubmitRequest, VideoInfo, get_provider
from .sidecar import MAX_SIDECAR_BYTES, PROVIDER_IDS, Sidecar, read_document, sidecar_too_large, validate_sidecar, variant_document, variant_prompts

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
    # The job's failover chain (None: one provider), and what its choice means for the record.
    chain: tuple[str, ...] | None = None
    chain_record: dict[str, Any] = field(default_factory=dict)
    field_sources: dict[str, str] = field(default_factory=dict)  # each field's folder defaults key, or "sidecar"
    video_info: VideoInfo | None = None  # what the cost estimate reads (its length)

    @property
    def uses_defaults(self) -> bool:
        return any(source != SIDECAR_SOURCE for source in self.field_sources.values())


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
    elif input_key.kind == "defaults":
        logger.info("ignored: folder defaults are read with each sidecar below them, never a job", extra={"key": key})
    else:
        logger.info("ignored: neither a sidecar nor a video", extra={"key": key})


def _on_sidecar(store: JobStore, bucket: str, sidecar_key: InputKey, receive_count: int, time_left: Callable[[], float] | None) -> None:
    settings = get_settings()
    info = storage.head(bucket, sidecar_key.key)
    if info is None:
        logger.info("sidecar gone before it was read", extra={"key": sidecar_key.key})
        return
    raw = storage.read_bytes(info, MAX_SIDECAR_BYTES) if info.size <= MAX_SIDECAR_BYTES else None
    # One job per prompt of `prompts`; one job for anything else (a sidecar that cannot be read
    # fails as that job, in `observe`). The same version always makes the same jobs.
    count = _variant_count(raw)
    variants: list[tuple[str, dict[str, Any]]] = [(job_id_for(bucket, sidecar_key.key, info.version_marker), {})]
    if count:
        variants = [
            (variant_job_id(bucket, sidecar_key.key, info.version_marker, index), {"variantIndex": index, "variantCount": count}) for index in range(count)
        ]
    retry: TransientError | None = None
    for job_id, variant in variants:
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
                **variant,
            },
        )
        if not created:
            logger.info("sidecar event repeated", extra={"state": job.state})
        try:
            _run(store, job, receive_count, time_left, sidecar_info=info, sidecar_raw=raw)
        except TransientError as exc:
            retry = retry or exc  # the other variants go on; the redelivery finds the ones done
    if retry is not None:
        raise retry


def _variant_count(raw: bytes | None) -> int:
    """How many prompts the sidecar's ``prompts`` holds; 0 for a sidecar without valid ``prompts``."""
    if raw is None:
        return 0
    try:
        return len(variant_prompts(read_document(raw)) or ())
    except JobError:
        return 0


def _on_video(store: JobStore, bucket: str, video_key: InputKey, receive_count: int, time_left: Callable[[], float] | None) -> None:
    # Sidecars that arrived first left a note under the video's key (named video) or stem.
    for job_id in store.waiters(bucket, [video_key.key, video_key.stem]):
        job = store.get(job_id)
        if job is None:
            continue
        logger.thread_safe_append_keys(job_id=job_id)
        _run(store, job, receive_count, time_left)


def _run(
    store: JobStore,
    job: Job,
    receive_count: int,
    time_left: Callable[[], float] | None,
    *,
    sidecar_info: storage.ObjectInfo | None = None,
    sidecar_raw: bytes | None = None,
) -> None:
    # Once more for each provider of a chain that refused the job "not now, and not you".
    for _ in range(len(PROVIDER_IDS) + 1):
        facts = observe(store, job, receive_count, sidecar_info, sidecar_raw)
        action = decide(facts)
        logger.info("intake decided", extra={"action": action.act.value, "reason": action.reason or (action.error.code if action.error else "")})
        if not act(store, job, facts, action, time_left):
            return
        moved = store.get(job.id)
        if moved is None:
            return
        job = moved


def handle_retry(job_id: str, receive_count: int = 1, time_left: Callable[[], float] | None = None) -> None:
    """A job's own message (``{"retryJob": id}``, see ``pacing``): its provider slot has come."""
    store = JobStore()
    job = store.get(job_id)
    if job is None:
        logger.info("retry message for a job that does not exist", extra={"job_id": job_id})
        return
    logger.thread_safe_append_keys(job_id=job_id)
    _run(store, job, receive_count, time_left)


def reconsider(store: JobStore, job: Job, time_left: Callable[[], float] | None = None) -> bool:
    """Run intake again for a job the reconciler found waiting too long (its event may have been
    lost to the dead-letter queue after repeated infrastructure errors). The same claim protects
    it: a job that was sent is never sent again. False when intake could not finish its look just
    now (a transient error: an AWS blip, a provider's "not now"), so what it found proves nothing."""
    try:
        _run(store, job, 1, time_left)
    except TransientError as exc:
        logger.info("reconsidered job still waits", extra={"reason": str(exc)})
        return False
    return True


# ---- observe -------------------------------------------------------------------------------------


def observe(store: JobStore, job: Job, receive_count: int, sidecar_info: storage.ObjectInfo | None = None, sidecar_raw: bytes | None = None) -> IntakeFacts:
    """Read what the decision needs, stopping at the first fact that settles it.

    ``sidecar_raw`` is the content of ``sidecar_info``'s version when the caller read it already.
    """
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
    raw = sidecar_raw if sidecar_raw is not None and sidecar_info is not None else storage.read_bytes(info, MAX_SIDECAR_BYTES)
    if raw is None:
        return IntakeFacts(job.state, sidecar_current=False)
    sources: dict[str, str] = {}
    try:
        variant_index = job.item.get("variantIndex")
        document = variant_document(read_document(raw), None if variant_index is None else int(variant_index))
        merged, sources = defaults.merge(document, defaults.load_defaults(info.bucket, info.key, settings.input_prefix))
        sidecar = validate_sidecar(merged)
        chain = provider_chain(sidecar)
        if chain is None:
            provider = get_provider(sidecar.provider or settings.default_provider)
            candidates = [(provider, provider.resolve_model(sidecar))]
        else:
            candidates = _chain_candidates(chain, sidecar, job)
        candidates = _honouring(candidates, sidecar, None, job)
        video, awaiting = _find_video(store, job.id, info, sidecar)
        if video is None:
            return IntakeFacts(job.state, awaiting=awaiting, attempts_left=attempts_left)
        video_info = VideoInfo(video.extension, video.info.size if video.info else None, partial(storage.read_range, video.info) if video.info else None)
        # The provider's formats and limits first: the plainest reason.
        provider, model = _honouring(candidates, sidecar, video_info, job)[0]
        video_info.check_container()  # a file that is not the video its name says stops here, before any provider
        reference_urls = tuple(_image_url(info, ref) for ref in sidecar.reference_images or ())
        frame_urls = tuple(_image_url(info, entry if isinstance(entry, str) else entry.image) for entry in sidecar.frame_images or ())
        provider.api_key()  # read before the claim: a missing key fails here, not after a claim
    except JobError as error:
        return IntakeFacts(job.state, problem=defaults.naming_sources(error, sources), attempts_left=attempts_left)
    record: dict[str, Any] = {}
    if chain is not None:
        record["providerChain"] = list(chain)
        if sidecar.model is not None and model != sidecar.model:
            record["modelNote"] = f"model `{sidecar.model}` is not offered by `{provider.id}`: its default model `{model}` runs the edit"
    # The job's own sidecar, as it was run: the variant's prompt, the folder defaults merged in.
    sidecar_json = json.dumps(merged, ensure_ascii=False)
    plan = SubmitPlan(provider, model, sidecar, sidecar_json, video, reference_urls, frame_urls, chain, record, sources, video_info)
    return IntakeFacts(job.state, plan=plan, attempts_left=attempts_left)


def provider_chain(sidecar: Sidecar) -> tuple[str, ...] | None:
    """The providers a job may fail over along, in order: the sidecar's ``providers``, else the
    stack's ``ProviderChain`` unless the sidecar names its ``provider``. None for one provider."""
    if sidecar.providers is not None:
        return tuple(sidecar.providers)
    if sidecar.provider is not None:
        return None
    chain = tuple(name.strip() for name in get_settings().provider_chain.split(",") if name.strip())
    return chain or None


def _chain_candidates(chain: tuple[str, ...], sidecar: Sidecar, job: Job) -> list[tuple[Provider, str]]:
    """The chain's providers the job has not been refused by, each with its model: the sidecar's
    model where the provider offers it, else the provider's default (a model belongs to one provider)."""
    providers = [get_provider(name) for name in chain]
    if sidecar.model is not None and not any(sidecar.model in provider.models for provider in providers):
        offered = "; ".join(f"{provider.id}: {', '.join(provider.models)}" for provider in providers)
        raise JobError("unknown_model", f"model `{sidecar.model}` is offered by no provider of the chain {', '.join(chain)} ({offered})", STAGE_INTAKE)
    tried = {entry.get("provider") for entry in job.providers_tried}
    return [(p, sidecar.model if sidecar.model in p.models else p.default_model) for p in providers if p.id not in tried]


def _honouring(candidates: list[tuple[Provider, str]], sidecar: Sidecar, video: VideoInfo | None, job: Job) -> list[tuple[Provider, str]]:
    """The candidates that honour every option of the sidecar (``Provider.check``), in order.
    Raises the check's own error for a job with one provider; for a chain, an error that names
    each provider and its answer (the last refusal's code once providers have refused the job)."""
    honouring: list[tuple[Provider, str]] = []
    refusals: list[JobError] = []
    for provider, model in candidates:
        try:
            provider.check(sidecar, model, video)
        except JobError as error:
            refusals.append(error)
            continue
        honouring.append((provider, model))
    if honouring:
        return honouring
    tried = job.providers_tried
    if not tried and len(refusals) == 1 and provider_chain(sidecar) is None:
        raise refusals[0]
    answers = [f"{entry.get('provider')}: {entry.get('reason')}" for entry in tried]
    answers += [f"{provider.id}: {error.message}" for (provider, _model), error in zip(candidates, refusals, strict=True)]
    if tried:
        last = tried[-1]
        message = f"every provider of the job's chain refused it or cannot honour it: {'; '.join(answers)}"
        details = {"providerCode": last["providerCode"]} if last.get("providerCode") is not None else {}
        raise JobError(str(last.get("code") or "provider_rejected"), message, "submit", details=details)
    first = refusals[0] if refusals else JobError("unsupported_option", "the chain names no provider", STAGE_INTAKE)
    raise JobError(first.code, f"no provider of the chain can honour this sidecar: {'; '.join(answers)}", first.stage, first.retryable)


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


def act(store: JobStore, job: Job, facts: IntakeFacts, action: Action, time_left: Callable[[], float] | None = None) -> bool:
    """Do the action; True when the job moved to the next provider of its chain (decide again)."""
    if action.act == Act.REWRITE_ERROR:
        write_error_json(store, job)
    elif action.act == Act.FAIL and action.error is not None:
        fail_job(store, job.id, action.error, unless_claimed=True)
    elif action.act == Act.RETRY:
        raise TransientError(action.reason)
    elif action.act == Act.WAIT:
        store.update_details(job.id, {"awaitingVideo": facts.awaiting})
    elif action.act == Act.SUBMIT and facts.plan is not None:
        if facts.plan.uses_defaults:
            store.update_details(job.id, {"fieldSources": facts.plan.field_sources})  # job.json names them
        return _submit_once(store, job.id, facts.plan, facts.attempts_left, time_left)
    return False


def _submit_once(store: JobStore, job_id: str, plan: SubmitPlan, attempts_left: bool, time_left: Callable[[], float] | None) -> bool:
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
        **plan.chain_record,
    }
    if video.info is not None:
        details.update(videoKey=video.info.key, videoETag=video.info.etag, videoSize=video.info.size)
    else:
        details["videoUrl"] = video.url
    if not _reserve_spend(store, job_id, plan, video_url=video_url, attempts_left=attempts_left, details=details):
        return False
    try:
        waits = pacing.hold_for_slot(store, job_id, plan.provider.id, wait_at_most=_pace_bound(plan), sent=details)
    except pacing.SlotTooFar as too_far:
        if _next_in_chain(plan) is not None:
            return _move_on_unsent(store, job_id, plan, too_far)
        waits = pacing.hold_for_slot(store, job_id, plan.provider.id, sent=details)  # no later provider honours the sidecar: it waits here
    if waits:
        return False  # the job waits in RECEIVED for its provider slot; a delayed message takes it up
    try:
        waits, flight_slot = inflight.take_or_wait(store, job_id, plan.provider.id, wait_at_most=_pace_bound(plan))
    except inflight.NoTaskSlot as too_long:
        if _next_in_chain(plan) is not None:
            return _move_on_unsent(store, job_id, plan, too_long)
        waits, flight_slot = inflight.take_or_wait(store, job_id, plan.provider.id)  # no later provider honours the sidecar: it waits here
    if waits:
        return False  # every task slot of the provider is in flight: the job waits in RECEIVED, a delayed message takes it up
    if flight_slot is not None:
        details["flightSlot"] = flight_slot  # released when the task ends (jobs.JobStore)
    # The claim is the record that a request may be on its way: written before anything that can
    # be cut off, so a killed invocation leaves a claimed job the reconciler settles, never a resend.
    claim = store.claim_submission(job_id, epoch_after(settings.job_deadline_seconds), details)
    if claim is None:
        logger.info("submission already claimed")
        if flight_slot is not None:
            inflight.keep_only_recorded(store, job_id, flight_slot)  # a concurrent attempt may have claimed with another slot
        return False
    callback_url = f"{settings.callback_api_url}/callbacks/{quote(plan.provider.id)}/{job_id}?token={claim.token}"
    request = SubmitRequest(job_id, plan.sidecar, plan.model, video_url, plan.reference_urls, callback_url, plan.frame_urls)
    try:
        task_id = plan.provider.submit(request)
    except ProviderError as exc:
        return _after_refusal(store, job_id, claim, exc, attempts_left, idempotent=plan.provider.idempotent_submit, plan=plan)
    except (JobError, TransientError) as exc:
        # Raised before anything was sent (the key could not be read just now).
        if isinstance(exc, JobError) and not (exc.retryable and attempts_left):
            if claim.sent_before:
                _await_earlier_send(store, job_id, claim, str(exc))
                return False
            store.release_claim(job_id, claim.claim_id, str(exc))
            fail_job(store, job_id, exc)
            budget.release(job_id)
            return False
        store.release_claim(job_id, claim.claim_id, str(exc))
        raise TransientError(str(exc)) from exc
    moved = store.mark_submitted(job_id, task_id)
    logger.info("submitted", extra={"provider": plan.provider.id, "model": plan.model, "provider_task_id": task_id})
    if moved and not plan.provider.webhooks:
        polling.start(job_id)  # no callback will come: the job's own poll loop finds the outcome
    return False


def _later_in_chain(plan: SubmitPlan) -> tuple[str, ...]:
    chain = plan.chain or ()
    return chain[chain.index(plan.provider.id) + 1 :] if plan.provider.id in chain else ()


def _pace_bound(plan: SubmitPlan) -> float | None:
    """How long the job may wait for its provider's slot: ``PaceMaxWaitSeconds`` when its chain
    goes on after this provider, else as long as it takes."""
    return get_settings().pace_max_wait_seconds if _later_in_chain(plan) else None


def _next_in_chain(plan: SubmitPlan) -> Provider | None:
    """The provider of the job's chain after this one that honours its sidecar (checked only once
    the slot is too far: the checks may read the video). None: the job waits here."""
    for name in _later_in_chain(plan):
        provider = get_provider(name)
        try:
            provider.check(plan.sidecar, plan.sidecar.model if plan.sidecar.model in provider.models else provider.default_model, plan.video_info)
        except JobError:
            continue
        return provider
    return None


def _move_on_unsent(store: JobStore, job_id: str, plan: SubmitPlan, too_far: pacing.SlotTooFar) -> bool:
    """No slot at the job's provider within the bound: the next provider of its chain takes the
    job (nothing was claimed or sent). True when it moved (intake decides again)."""
    job = store.get(job_id)
    tried = job.providers_tried if job is not None else []
    if tried and tried[-1].get("provider") == plan.provider.id:
        return True  # another attempt moved it on from this provider just now: decide again
    moved = store.move_on(job_id, None, plan.provider.id, plan.model, too_far.to_job_error(), tried_before=len(tried))
    if moved:
        budget.release(job_id)  # the next provider reserves its own estimate
    logger.warning("no provider slot within the bound; moving along the chain", extra={"provider": plan.provider.id, "reason": str(too_far)})
    return moved


def _reserve_spend(store: JobStore, job_id: str, plan: SubmitPlan, *, video_url: str, attempts_left: bool, details: dict[str, Any]) -> bool:
    """Estimate the job's cost (recorded in ``details`` as ``costEstimate``) and reserve it in the
    budgets, before the claim; False when the job failed here (over budget) with nothing sent."""
    video = (plan.video_info or VideoInfo(plan.video.extension, None)).with_url(video_url)
    try:
        estimate = plan.provider.estimate_cost(plan.sidecar, plan.model, video)
        budget.reserve(job_id, plan.provider.id, estimate)
    except JobError as error:
        if error.retryable and attempts_left:
            raise TransientError(error.message) from error
        fail_job(store, job_id, error, unless_claimed=True)
        return False
    if estimate is not None:
        details["costEstimate"] = estimate
    return True


def _after_refusal(
    store: JobStore, job_id: str, claim: Claim, exc: ProviderError, attempts_left: bool, *, idempotent: bool, plan: SubmitPlan | None = None
) -> bool:
    """Settle a submit the provider did not answer with a task id; True when the job moved to the
    next provider of its chain."""
    if exc.kind == "ambiguous" and idempotent and attempts_left:
        # The same request again either creates the task or is answered "already taken": one task.
        store.release_claim(job_id, claim.claim_id, exc.message, may_have_reached=True)
        raise TransientError(exc.message) from exc
    if exc.kind == "ambiguous":
        # Never resubmit: the callback (it carries our job id and token) or a poll settles it,
        # or the deadline fails it as `submit_ambiguous`.
        store.note_unanswered(job_id, claim.claim_id, claim.sent_before or exc.message)
        logger.warning("submission outcome unknown; waiting for the provider", extra={"reason": exc.message})
        return False
    if exc.not_you and plan is not None and plan.chain is not None and not claim.sent_before:
        # Provably not taken, and no earlier request of this job may have made a task: the next
        # provider of the chain gets it (none left: intake fails it naming every answer).
        moved = store.move_on(job_id, claim.claim_id, plan.provider.id, plan.model, exc.to_job_error())
        if moved:
            budget.release(job_id)  # the next provider reserves its own estimate
        logger.warning("provider refused the job for now; moving along the chain", extra={"provider": plan.provider.id, "reason": exc.message})
        return moved
    if pacing.is_rate_limited(exc) and not claim.sent_before:  # (after an unanswered send: the path below)
        pacing.slow_down(store, job_id, claim.claim_id, exc.message)  # a 429 slows the provider down, never fails the job
        return False
    if exc.kind == "retryable" and attempts_left:
        store.release_claim(job_id, claim.claim_id, exc.message)
        raise TransientError(exc.message) from exc
    if claim.sent_before:
        _await_earlier_send(store, job_id, claim, exc.message)
        return False
    fail_job(store, job_id, exc.to_job_error())
    budget.release(job_id)  # refused or never taken, and no earlier request unanswered: nothing was spent
    return False


def _await_earlier_send(store: JobStore, job_id: str, claim: Claim, answer: str) -> None:
    """A repeat that ends without a task id, after an earlier request went unanswered: that one
    may have made the task (and a refusal now, a 402 say, may be because it did). Never failed
    as "not taken": the job waits for the callback or a poll, or its deadline (`submit_ambiguous`)."""
    store.note_unanswered(job_id, claim.claim_id, str(claim.sent_before))
    logger.warning("a repeated submit was not taken; the earlier request may have been", extra={"reason": answer})
