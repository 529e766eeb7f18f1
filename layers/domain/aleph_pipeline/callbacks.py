"""A provider's callback: authenticate it, read it, and move the job (a contract)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .config import get_settings
from .errors import JobError
from .jobs import TERMINAL, Job, JobState, JobStore
from .log import logger
from .outputs import fail_job, write_error_json
from .providers import PROVIDER_IDS, CallbackInvalid, CallbackUnauthorized, Outcome, Provider, ResultItem, get_provider
from .storage import MAX_RESULT_URL_CHARS, check_url

MAX_CALLBACK_BYTES = 1024 * 1024
JOB_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
# Our tokens are token_urlsafe(32) (43 characters); anything else cannot match, and is not hashed.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,256}")
# A provider's task ids are short (UUIDs, hex); a result's id is its UUID or, without one, its URL
# (at most storage.MAX_RESULT_URL_CHARS). A longer id, or one that is not plain printable text, is
# not recorded: it would be a DynamoDB value or attribute name of unbounded size.
MAX_TASK_ID_CHARS = 256
MAX_ANSWER_MESSAGE_CHARS = 500


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any] = field(default_factory=dict)


def receive_callback(provider_id: str, job_id: str, token: str | None, body: bytes, headers: Mapping[str, str]) -> Answer:
    if len(body) > MAX_CALLBACK_BYTES:
        return Answer(413, {"message": f"callback body over {MAX_CALLBACK_BYTES} bytes"})
    if provider_id not in PROVIDER_IDS or not JOB_ID_PATTERN.fullmatch(job_id):
        return Answer(404, {"message": "no such job"})
    if not get_provider(provider_id).webhooks:  # Runway: completion comes from polling only
        return Answer(404, {"message": "no such job"})
    store = JobStore()
    job = store.get(job_id)
    if job is None or job.provider != provider_id:
        return Answer(404, {"message": "no such job"})
    if token is None or not TOKEN_PATTERN.fullmatch(token) or not job.token_matches(token):
        logger.warning("callback refused: bad or missing token", extra={"job_id": job_id})
        return Answer(401, {"message": "bad or missing token"})
    logger.thread_safe_append_keys(job_id=job_id)
    provider = get_provider(provider_id)
    try:
        outcome = provider.parse_callback(body, headers)
    except CallbackUnauthorized as exc:
        logger.warning("callback refused: bad signature", extra={"reason": str(exc)})
        return Answer(401, {"message": str(exc)})
    except CallbackInvalid as exc:
        # A parser may quote what it refused (crun's unknown status): echoed back shortened.
        return Answer(400, {"message": JobError.shorten(exc, MAX_ANSWER_MESSAGE_CHARS)})
    unrecordable = _unrecordable_id(outcome)
    if unrecordable:
        return Answer(400, {"message": unrecordable})
    if outcome.task_id and job.provider_task_id and outcome.task_id != job.provider_task_id:
        return Answer(400, {"message": "the callback's task id does not belong to this job"})
    result = apply_outcome(store, job, provider, outcome)
    if result == "rejected":
        return Answer(400, {"message": "a result URL is not on the provider's allowed hosts"})
    job_state = {"failed": JobState.FAILED.value, "succeeded": JobState.SUCCEEDED.value}.get(result, job.state.value)
    return Answer(200, {"status": "accepted" if result in ("failed", "succeeded", "recorded") else result, "state": job_state})


def _unrecordable_id(outcome: Outcome) -> str | None:
    """Why an outcome's task or result id cannot be recorded (None when they can)."""
    named = [("task id", outcome.task_id, MAX_TASK_ID_CHARS), *(("result id", item.id, MAX_RESULT_URL_CHARS) for item in outcome.items)]
    for what, value, limit in named:
        if value is not None and (len(value) > limit or not value.isprintable()):
            # isprintable() is False for a lone surrogate and for control characters.
            return f"the callback's {what} is not printable text of at most {limit} characters"
    return None


def apply_outcome(store: JobStore, job: Job, provider: Provider, outcome: Outcome) -> str:
    """Move a job by what the provider says: the one path for callbacks and the reconciler's polls.

    Returns ``ignored`` (job already past it), ``noted`` (still running), ``failed``,
    ``recorded`` (a result of several is in), ``succeeded`` (all are), or ``rejected`` (a result
    URL off the provider's hosts: nothing fetched, no change).
    """
    if job.state == JobState.FAILED:
        # A repeat of the outcome that failed it may follow an invocation cut off before error.json.
        write_error_json(store, job)
    if job.state in TERMINAL or job.state == JobState.SUCCEEDED:
        logger.info("late or repeated outcome; no change", extra={"state": job.state})
        return "ignored"
    if outcome.state == "running":
        return "noted"
    if outcome.state == "failed":
        fail_job(store, job.id, outcome.error or JobError("generation_failed", "the provider reported a failure", "provider"))
        return "failed"
    settings = get_settings()
    items = []
    try:
        for item in outcome.items:
            check_url(item.video_url, provider.allowed_result_hosts, settings.allow_http_result_urls)
            items.append(item if item.cover_url is None or _allowed(item.cover_url, provider) else replace(item, cover_url=None))
    except JobError as exc:
        # Nothing is fetched and the job waits: the real result still comes by callback or poll.
        logger.warning("outcome refused: result URL not allowed", extra={"reason": exc.message})
        return "rejected"
    # One callback may carry one result of several (Runware sends one per result): each is
    # recorded once, and the job succeeds when the last expected one is in. The task id, when the
    # outcome names one, is written in the same conditional update as the state.
    for item in items:
        store.record_result(job.id, _result_record(item), task_id=outcome.task_id)
    after = store.get(job.id)
    return "succeeded" if after is not None and after.state == JobState.SUCCEEDED else "recorded"


def _allowed(url: str, provider: Provider) -> bool:
    """The cover is optional: one on a host not allowed is dropped, the video still counts."""
    try:
        check_url(url, provider.allowed_result_hosts, get_settings().allow_http_result_urls)
    except JobError as exc:
        logger.warning("cover dropped: URL not allowed", extra={"reason": exc.message})
        return False
    return True


def _result_record(item: ResultItem) -> dict[str, Any]:
    record: dict[str, Any] = {"id": item.id, "url": item.video_url, "cover": item.cover_url, "cost": item.cost, "seed": item.seed}
    return {name: value for name, value in record.items() if value is not None}
