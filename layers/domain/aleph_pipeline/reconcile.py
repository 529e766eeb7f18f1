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
- FAILED in the last hour and ``error.json`` not noted as written: writes it where an invocation
  was cut off before it (paged, so newer failures never hide an older one).
- RECEIVED after an unanswered request to a provider whose repeat makes no second task (Runware):
  sends it again; whatever a later repeat is answered, the job is never failed as "not taken".

A job examined but not settled is touched (``updatedAt``), so the next run looks at others first:
a few jobs that cannot be settled never hold back the rest. Each provider's calls are isolated:
after ``PROVIDER_FAILURES_BEFORE_SKIP`` failed polls in a run, that provider is left for the next
run (its jobs' deadlines still apply). The run stops taking jobs when the invocation's time is
nearly used, and a deadline is applied whatever a poll did.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain, zip_longest

from . import storage, telemetry
from .callbacks import apply_outcome
from .clients import client
from .config import get_settings
from .errors import STAGE_FINALIZE, STAGE_INTAKE, STAGE_PROVIDER, STAGE_SUBMIT, JobError
from .intake import handle_object_created, handle_retry, object_created_records, reconsider
from .jobs import Job, JobState, JobStore
from .log import logger
from .outputs import fail_job, write_error_json
from .pacing import retry_job_id
from .providers import Outcome, Provider, get_provider

# What apply_outcome answers when the job moved on; anything else (a refused result URL) settles nothing.
SETTLED = ("failed", "succeeded", "recorded")
PROVIDER_FAILURES_BEFORE_SKIP = 2
FAILED_REPAIR_SECONDS = 3600
# Left for the last jobs of a run: one provider call (connect + read) and the writes after it.
CALL_MARGIN_SECONDS = 10.0


@dataclass
class ReconcileReport:
    examined: int = 0
    polled: int = 0
    settled: int = 0
    timed_out: int = 0
    nudged: int = 0
    repaired: int = 0
    redriven: int = 0
    errors: int = 0
    skipped_providers: int = 0
    out_of_time: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _Run:
    """One run's shared state: the clock, the time left and each provider's failures."""

    store: JobStore
    now: float
    report: ReconcileReport
    time_left: Callable[[], float]
    failures: Counter[str] = field(default_factory=Counter)

    def can_call(self, provider_id: str) -> bool:
        return self.failures[provider_id] < PROVIDER_FAILURES_BEFORE_SKIP

    def poll(self, provider: Provider, task_id: str) -> Outcome | None:
        """Poll a task; None when the provider could not answer (anything raised counts against it)."""
        if not self.can_call(provider.id):
            return None
        self.report.polled += 1
        try:
            outcome = provider.poll(task_id)
        except Exception as exc:
            self.failures[provider.id] += 1
            if not self.can_call(provider.id):
                self.report.skipped_providers += 1
            logger.warning("poll failed", extra={"reason": str(exc)[:300], "provider": provider.id})
            return None
        self.failures[provider.id] = 0
        return outcome


def reconcile(now: float | None = None, time_left: Callable[[], float] | None = None) -> ReconcileReport:
    """``time_left``: seconds left in the invocation (the Lambda context's); unbounded when None."""
    settings = get_settings()
    store = JobStore()
    report = ReconcileReport()
    run = _Run(store, time.time() if now is None else now, report, time_left or (lambda: float("inf")))
    limit = settings.reconcile_batch_size
    needed = settings.provider_read_timeout_seconds + CALL_MARGIN_SECONDS

    # RECEIVED jobs are due when the pairing deadline or a claim's settling time may have passed.
    received_age = min(settings.pairing_timeout_seconds, settings.claim_settle_seconds)
    work: Iterable[tuple[Job, Callable[[_Run, Job], None]]] = chain(
        ((job, _settle_submitted) for job in _by_provider(store.stale(JobState.SUBMITTED, _iso(run.now - settings.callback_grace_seconds), limit))),
        ((job, _settle_received) for job in _by_provider(store.stale(JobState.RECEIVED, _iso(run.now - received_age), limit))),
        ((job, _settle_succeeded) for job in store.stale(JobState.SUCCEEDED, _iso(run.now - settings.finalize_grace_seconds), limit)),
        ((job, _repair_failed) for job in store.failed_without_error_json(_iso(run.now - FAILED_REPAIR_SECONDS), limit)),
    )
    # Dead-lettered uploads first: they have no job yet, nothing else would ever find them.
    if settings.submit_dead_letter_queue_url:
        try:
            _redrive_dead_letters(run, settings.submit_dead_letter_queue_url, needed)
        except Exception:
            report.errors += 1
            logger.exception("the submit dead-letter queue could not be read; the next run tries again")
    for job, settle in work:
        if run.time_left() < needed:
            report.out_of_time += 1
            break
        _guarded(run, job, settle)
    logger.info("reconciled", extra=report.as_dict())
    telemetry.reconcile_backlog(report.as_dict())
    return report


def _redrive_dead_letters(run: _Run, queue_url: str, needed: float) -> None:
    """Run intake for the uploads whose events met an error on every delivery (they are in the
    submit queue's dead-letter queue): the same claim protects them, so nothing is sent twice.
    A message is deleted once intake took it; one that fails stays for the next run."""
    settings = get_settings()
    answer = client("sqs").receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=10,
        # Hidden only as long as intake may take: a run cut off leaves them for the next one.
        VisibilityTimeout=int(needed) + 5,
        WaitTimeSeconds=0,
        AttributeNames=["ApproximateReceiveCount"],
    )
    for message in answer.get("Messages", []):
        if run.time_left() < needed:
            run.report.out_of_time += 1
            return
        if int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1)) > settings.dead_letter_max_redrives:
            continue  # kept for the dead-letter alarm and a person
        try:
            waiting_job = retry_job_id(message["Body"])
            if waiting_job is not None:  # a job's own message back at its provider slot, dead-lettered
                handle_retry(waiting_job, 1, run.time_left)
            for bucket, key in [] if waiting_job is not None else object_created_records(message["Body"]):
                handle_object_created(bucket, key, 1, run.time_left)
        except Exception:
            run.report.errors += 1
            logger.exception("a dead-lettered upload still fails; the next run tries again")
            continue
        client("sqs").delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        run.report.redriven += 1


def _by_provider(jobs: list[Job]) -> list[Job]:
    """Interleave the providers' jobs, so one slow provider cannot use a run before the others get a turn."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(str(job.provider), []).append(job)
    return [job for row in zip_longest(*groups.values()) for job in row if job is not None]


def _guarded(run: _Run, job: Job, settle: Callable[[_Run, Job], None]) -> None:
    """One job's trouble (a provider down, a throttled table) must not stop the sweep."""
    run.report.examined += 1
    logger.thread_safe_append_keys(job_id=job.id)
    try:
        settle(run, job)
    except Exception:
        run.report.errors += 1
        logger.exception("reconcile failed for a job; the next run tries again")
    finally:
        logger.thread_safe_remove_keys(["job_id"])


def _settle_submitted(run: _Run, job: Job) -> None:
    task_id = job.provider_task_id
    if task_id and _poll_and_apply(run, job, task_id):
        return
    if _past_deadline(job, run.now):
        settings = get_settings()
        message = f"the provider did not finish the job within {settings.job_deadline_seconds} s"
        _time_out(run, job, JobError("deadline_exceeded", message, STAGE_PROVIDER, retryable=True))
    else:
        run.store.note_polled(job.id, JobState.SUBMITTED)


def _settle_received(run: _Run, job: Job) -> None:
    settings = get_settings()
    if not job.submission_claimed:
        _settle_unclaimed(run, job)
        return
    claimed_at = _epoch(job.item["submission"].get("claimedAt"))
    if not job.submit_unanswered and claimed_at is not None and run.now - claimed_at < settings.claim_settle_seconds:
        return  # a submit may still be running
    provider = get_provider(str(job.provider))
    if provider.idempotent_submit and not _past_deadline(job, run.now) and run.can_call(provider.id):
        # The same request again (the task id is the job's own) creates the task or is answered
        # "already taken": one task either way. A poll could not tell "never created" from
        # "failed" (Runware answers both with taskFailedOrNotFound).
        claim_id = str(job.item["submission"].get("claimId"))
        run.store.release_claim(job.id, claim_id, "the submit's answer was never recorded; sent again with the same task id", may_have_reached=True)
        current = run.store.get(job.id)
        if current is not None:
            reconsider(run.store, current, run.time_left)
            after = run.store.get(job.id)
            run.report.settled += after is not None and after.state != JobState.RECEIVED
        return
    _settle_ambiguous(run, job, provider)


def _settle_ambiguous(run: _Run, job: Job, provider: Provider) -> None:
    """A job whose request may have reached the provider without an answer: it waits for the
    callback or a poll, and at its deadline fails as ``submit_ambiguous``, never as "not taken"."""
    reference = provider.own_reference(job.id)
    # Only a success settles an unconfirmed submission: "failed" may mean the task never existed
    # (Runware answers both with taskFailedOrNotFound), and such a job ends as submit_ambiguous.
    if reference and _poll_and_apply(run, job, reference, successes_only=True):
        return
    if not _past_deadline(job, run.now):
        run.store.note_polled(job.id, JobState.RECEIVED)
        return
    unanswered = (job.item.get("submission") or {}).get("unanswered") or {}
    reason = unanswered.get("reason") or job.sent_before or "the submitting invocation ended before the answer was recorded"
    error = JobError(
        "submit_ambiguous",
        f"{job.provider} gave no clear answer to the submission ({reason}) and neither a callback nor a poll settled it within "
        f"{get_settings().job_deadline_seconds} s. The provider may have run and charged the task: look for job {job.id} in its task "
        "list (the callback URL contains the job id) before uploading the sidecar again.",
        STAGE_SUBMIT,
    )
    # An unclaimed job (a repeat was refused and its claim given back) fails only while no new attempt holds a claim.
    fail_job(run.store, job.id, error, only_from=JobState.RECEIVED, unless_claimed=not job.submission_claimed)
    run.report.timed_out += 1


def _settle_unclaimed(run: _Run, job: Job) -> None:
    settings = get_settings()
    pairing_deadline = job.item.get("pairingDeadline")
    past_pairing = pairing_deadline is not None and run.now > float(pairing_deadline)
    past_deadline = pairing_deadline is None and _past_deadline(job, run.now)
    if not (past_pairing or past_deadline):
        if pairing_deadline is None and job.item.get("lastRefusal") and _idle(job, run.now) > settings.claim_settle_seconds:
            reconsider(run.store, job, run.time_left)  # a refused submit whose retries stopped: try again
        elif _wait_overdue(job, run.now, settings.claim_settle_seconds):
            reconsider(run.store, job, run.time_left)  # its message back at its slot never came (lost): look again
        run.store.note_polled(job.id, JobState.RECEIVED)
        return
    # Before failing, look once more: the event that should have moved it on may have been lost.
    looked = reconsider(run.store, job, run.time_left)
    current = run.store.get(job.id)
    if current is None or current.state != JobState.RECEIVED or current.submission_claimed:
        run.report.settled += 1
        return
    if past_pairing and current.item.get("pairingDeadline") is None and not _past_deadline(current, run.now):
        # The look found the video (its claim cleared the pairing deadline) and the provider
        # refused for now (a 429): no pairing timeout. The job waits for the next try, like any
        # refused submit, until its own deadline.
        run.store.note_polled(job.id, JobState.RECEIVED)
        return
    if current.sent_before:
        # A repeat was refused after an earlier request went unanswered: that one may have made the task.
        _settle_ambiguous(run, current, get_provider(str(current.provider)))
        return
    if past_pairing and current.item.get("pairingDeadline") is not None and not looked:
        # The look could not be made (S3 or DynamoDB failing just now): no proof the video is
        # missing. The next run looks again.
        run.store.note_polled(job.id, JobState.RECEIVED)
        return
    if past_pairing and current.item.get("pairingDeadline") is not None:
        awaiting = current.item.get("awaitingVideo")
        video = f" (`{awaiting}` in the input bucket)" if awaiting else ""
        error = JobError("pairing_timeout", f"the sidecar's video{video} did not arrive within {settings.pairing_timeout_seconds} s", STAGE_INTAKE)
    elif waited_for_slot(current):
        # Held back by the provider's limits all along: never sent, so never refused either.
        provider = (current.item.get("paceSlot") or current.item.get("flightWait") or {}).get("provider")
        message = f"the job waited for a slot at {provider} until its deadline of {settings.job_deadline_seconds} s passed; nothing was sent"
        error = JobError("slot_timeout", message, STAGE_SUBMIT, retryable=True)
    else:
        # The video was found and the provider kept refusing the request (it was never taken).
        refusal = current.item.get("lastRefusal") or "no answer recorded"
        message = f"{job.provider} did not take the request before the deadline (last answer: {refusal})"
        error = JobError("provider_unavailable", message, STAGE_SUBMIT, retryable=True)
    fail_job(run.store, job.id, error, unless_claimed=True)
    run.report.timed_out += 1


def _wait_overdue(job: Job, now: float, grace: float) -> bool:
    """The job waits for a provider slot whose time (or last look, for a task slot) passed more
    than ``grace`` ago: the message that brings it back should have come by then."""
    wait = job.item.get("paceSlot") or job.item.get("flightWait")
    return isinstance(wait, dict) and "at" in wait and float(wait["at"]) + grace < now


def waited_for_slot(job: Job) -> bool:
    """The unclaimed job waits for a provider slot (its pace, or a task slot) and no request of
    it was refused."""
    return ("paceSlot" in job.item or "flightWait" in job.item) and not job.item.get("lastRefusal")


def _idle(job: Job, now: float) -> float:
    updated = _epoch(job.item.get("updatedAt"))
    return now - updated if updated is not None else 0.0


def _poll_and_apply(run: _Run, job: Job, task_id: str, *, successes_only: bool = False) -> bool:
    """Poll and apply the answer; False when nothing was settled (no answer, still running, or a
    result URL refused), so the job's deadline still applies: a provider that keeps answering
    with a foreign URL, or cannot be asked, must not keep the job open for ever."""
    provider = get_provider(str(job.provider))
    outcome = run.poll(provider, task_id)
    if outcome is None or outcome.state == "running" or (successes_only and outcome.state != "succeeded"):
        return False
    result = apply_outcome(run.store, job, provider, outcome)
    run.report.settled += result in SETTLED
    return result != "rejected"


def _settle_succeeded(run: _Run, job: Job) -> None:
    settings = get_settings()
    if run.store.nudge_finalize(job.id, settings.finalize_max_nudges):
        run.report.nudged += 1
        return
    error = JobError("result_unavailable", f"finalize could not copy the result after {settings.finalize_max_nudges + 1} attempts", STAGE_FINALIZE)
    fail_job(run.store, job.id, error)
    run.report.timed_out += 1


def _repair_failed(run: _Run, job: Job) -> None:
    """A FAILED job whose error.json is not known to be written: its invocation was cut off between
    the two (or it failed before jobs noted it). One HEAD tells which."""
    if storage.head(get_settings().output_bucket_name, job.output_prefix + "error.json") is None:
        write_error_json(run.store, job)
        run.report.repaired += 1
    else:
        run.store.note_error_written(job.id)


def _time_out(run: _Run, job: Job, error: JobError) -> None:
    fail_job(run.store, job.id, error, only_from=job.state)
    run.report.timed_out += 1


def _past_deadline(job: Job, now: float) -> bool:
    deadline = job.item.get("deadlineAt")
    return deadline is not None and now > float(deadline)


def _iso(epoch: float) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=epoch)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
