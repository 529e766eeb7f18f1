"""The periodic sweep that finishes what callbacks alone would leave hanging.

Callbacks are notifications that can be late, duplicated or never sent. Every few minutes the
reconciler looks up jobs that have sat in a state too long (a query on the status index, a bounded
number per run, never a scan) and:

- SUBMITTED past the callback grace period: polls the provider with our own key and applies the
  answer through the same code as a callback; fails the job once its deadline has passed.
- RECEIVED and unclaimed past the pairing deadline: fails it (the video never arrived).
- RECEIVED with a submission claim whose outcome was never recorded (a timeout after sending):
  polls where the provider can find the task by our own reference, else waits for the callback
  until the deadline. It never submits again: that could pay twice.
- SUCCEEDED past the finalize grace period: touches the job so the stream runs finalize again,
  a bounded number of times, then fails it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from .callbacks import apply_outcome
from .config import get_settings
from .errors import STAGE_FINALIZE, STAGE_INTAKE, STAGE_PROVIDER, JobError
from .jobs import Job, JobState, JobStore
from .log import logger
from .outputs import fail_job
from .providers import Outcome, Provider, ProviderError, get_provider

# What apply_outcome answers when the job moved on; anything else (a refused result URL) settles nothing.
SETTLED = ("failed", "succeeded", "recorded")


@dataclass
class ReconcileReport:
    examined: int = 0
    polled: int = 0
    settled: int = 0
    timed_out: int = 0
    nudged: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def reconcile(now: float | None = None) -> ReconcileReport:
    settings = get_settings()
    store = JobStore()
    report = ReconcileReport()
    now = time.time() if now is None else now
    limit = settings.reconcile_batch_size

    for job in store.stale(JobState.SUBMITTED, _iso(now - settings.callback_grace_seconds), limit):
        _guarded(report, job, partial(_settle_submitted, store, job, now, report))
    # RECEIVED jobs are due when the pairing deadline or a claim's settling time may have passed.
    received_age = min(settings.pairing_timeout_seconds, settings.claim_settle_seconds)
    for job in store.stale(JobState.RECEIVED, _iso(now - received_age), limit):
        _guarded(report, job, partial(_settle_received, store, job, now, report))
    for job in store.stale(JobState.SUCCEEDED, _iso(now - settings.finalize_grace_seconds), limit):
        _guarded(report, job, partial(_settle_succeeded, store, job, report))
    logger.info("reconciled", extra=report.as_dict())
    return report


def _guarded(report: ReconcileReport, job: Job, work: Callable[[], None]) -> None:
    """One job's trouble (a provider down, a throttled table) must not stop the sweep."""
    report.examined += 1
    logger.thread_safe_append_keys(job_id=job.id)
    try:
        work()
    except Exception:
        report.errors += 1
        logger.exception("reconcile failed for a job; the next run tries again")
    finally:
        logger.thread_safe_remove_keys(["job_id"])


def _settle_submitted(store: JobStore, job: Job, now: float, report: ReconcileReport) -> None:
    task_id = job.provider_task_id
    provider = get_provider(str(job.provider))
    if task_id:
        report.polled += 1
        try:
            outcome = provider.poll(task_id)
        except ProviderError as exc:
            logger.warning("poll failed", extra={"reason": exc.message, "kind": exc.kind})
            outcome = None
        if outcome is not None and outcome.state != "running" and _applied(store, job, provider, outcome, report):
            return
    if _past_deadline(job, now):
        _time_out(store, job, report)
    else:
        store.note_polled(job.id, JobState.SUBMITTED)


def _settle_received(store: JobStore, job: Job, now: float, report: ReconcileReport) -> None:
    settings = get_settings()
    if not job.submission_claimed:
        deadline = job.item.get("pairingDeadline")
        if deadline is not None and now > float(deadline):
            awaiting = job.item.get("awaitingVideo")
            video = f" (`{awaiting}` in the input bucket)" if awaiting else ""
            error = JobError(
                "pairing_timeout",
                f"the sidecar's video{video} did not arrive within {settings.pairing_timeout_seconds} s",
                STAGE_INTAKE,
            )
            fail_job(store, job.id, error, unless_claimed=True)
            report.timed_out += 1
        return
    claimed_at = _epoch(job.item["submission"].get("claimedAt"))
    if claimed_at is not None and now - claimed_at < settings.claim_settle_seconds:
        return  # a submit may still be running
    provider = get_provider(str(job.provider))
    reference = provider.own_reference(job.id)
    if reference:
        report.polled += 1
        try:
            outcome = provider.poll(reference)
        except ProviderError as exc:
            logger.warning("poll of an unconfirmed submission failed", extra={"reason": exc.message})
            outcome = None
        if outcome is not None and outcome.state != "running" and _applied(store, job, provider, outcome, report):
            return
    if _past_deadline(job, now):
        _time_out(store, job, report)


def _applied(store: JobStore, job: Job, provider: Provider, outcome: Outcome, report: ReconcileReport) -> bool:
    """Apply a polled outcome; False when it settled nothing (its result URL was refused), so the
    job's deadline still applies: a provider that keeps answering with a foreign URL must not keep
    the job open for ever."""
    result = apply_outcome(store, job, provider, outcome)
    report.settled += result in SETTLED
    return result != "rejected"


def _settle_succeeded(store: JobStore, job: Job, report: ReconcileReport) -> None:
    settings = get_settings()
    if store.nudge_finalize(job.id, settings.finalize_max_nudges):
        report.nudged += 1
        return
    error = JobError("result_unavailable", f"finalize could not copy the result after {settings.finalize_max_nudges + 1} attempts", STAGE_FINALIZE)
    fail_job(store, job.id, error)
    report.timed_out += 1


def _time_out(store: JobStore, job: Job, report: ReconcileReport) -> None:
    settings = get_settings()
    error = JobError(
        "deadline_exceeded",
        f"the provider did not finish the job within {settings.job_deadline_seconds} s",
        STAGE_PROVIDER,
        retryable=True,
    )
    fail_job(store, job.id, error, only_from=job.state)
    report.timed_out += 1


def _past_deadline(job: Job, now: float) -> bool:
    deadline = job.item.get("deadlineAt")
    return deadline is not None and now > float(deadline)


def _iso(epoch: float) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=epoch)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
