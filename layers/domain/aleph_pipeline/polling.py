"""The per-job poll loop of providers without webhooks (``Provider.webhooks = False``: Runway).

Mechanism: SQS delayed messages (the template's ``PollQueue``). Intake, after a successful
submit, sends ``{"jobId", "seq": 1}`` with a delay of about ``poll_first_delay_seconds``; each
message is one poll. Chosen over a Step Functions wait loop because it is the cheapest per poll
(one SendMessage, one receive and one delete, about $1.2 per million polls, against $25 per
million state transitions and several transitions per poll), keeps no execution per job, and
the local stack already runs SQS event sources. SQS delays at most 900 s; ours stay at or below
``poll_max_delay_seconds``.

Each message: the job is read; a job no longer SUBMITTED, or a message that is not the loop's
next step (``seq`` against the job's ``pollSeq``), is dropped. Otherwise the provider is polled
and its answer applied through ``callbacks.apply_outcome`` (the one path callbacks and the
reconciler take). A task still running, before the job's deadline and within
``poll_max_polls``, takes this step (``JobStore.advance_poll``, a conditional write) and sends
the next message with a delay grown by ``poll_backoff_factor``, jittered, capped at
``poll_max_delay_seconds`` (a ``throttled`` answer waits longer). Only one message per step
can take it, so a duplicate or a redelivery never forks the loop. The loop ends at the deadline
(the last delay ends on it) and after ``poll_max_polls``; the reconciler's sweep stays the safety
net for a loop that ended or died (it polls SUBMITTED jobs not updated for the callback grace
period and fails them at the deadline).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from .callbacks import apply_outcome
from .clients import client
from .config import get_settings
from .jobs import JobState, JobStore
from .log import logger
from .providers import Outcome, ProviderError, get_provider

MAX_SQS_DELAY_SECONDS = 900
# A poll needs one provider call (connect + read) and the writes around it.
CONNECT_SECONDS = 5.0
MARGIN_SECONDS = 10.0
THROTTLED_CODES = frozenset({"429", "THROTTLED"})


def seconds_needed_to_poll() -> float:
    return get_settings().provider_read_timeout_seconds + CONNECT_SECONDS + MARGIN_SECONDS


@dataclass(frozen=True)
class PollMessage:
    """One step of a job's poll loop, as the SQS message body carries it."""

    job_id: str
    seq: int

    def to_body(self) -> str:
        return json.dumps({"jobId": self.job_id, "seq": self.seq})

    @classmethod
    def from_body(cls, body: str) -> PollMessage:
        """Raises ValueError for a body that is not a poll message."""
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError("the poll message is not a JSON object")
        job_id, seq = document.get("jobId"), document.get("seq")
        if not isinstance(job_id, str) or not job_id or not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError("a poll message needs a string `jobId` and an integer `seq` from 1")
        return cls(job_id, seq)


class PollResult(StrEnum):
    MALFORMED = "malformed"  # not a poll message: dropped
    STALE = "stale"  # not the loop's next step (a duplicate, a redelivery of a step taken): dropped
    FINISHED = "finished"  # the job is no longer SUBMITTED: dropped, the loop ends
    SETTLED = "settled"  # this poll's answer moved the job on: the loop ends
    CONTINUED = "continued"  # still running: the next message is sent
    DEADLINE = "deadline"  # still running at the job's deadline: the loop ends (the reconciler fails it)
    MAX_POLLS = "max_polls"  # still running after poll_max_polls: the loop ends (the sweep takes over)


def delay_before(seq: int, *, throttled: bool = False, rng: random.Random | None = None) -> int:
    """Seconds to wait before poll ``seq`` (from 1): ``first x factor^(seq-1)``, capped; a
    throttled answer waits as if two more polls had gone by. Jitter of ``poll_jitter`` either way
    spreads jobs submitted together; the result stays within [1, cap]."""
    settings = get_settings()
    cap = min(settings.poll_max_delay_seconds, MAX_SQS_DELAY_SECONDS)
    steps = seq - 1 + (2 if throttled else 0)
    # The exponent is bounded before the power: a long loop must not overflow the float.
    base = min(settings.poll_first_delay_seconds * settings.poll_backoff_factor ** min(steps, 64), cap)
    jitter = (rng or random).uniform(1 - settings.poll_jitter, 1 + settings.poll_jitter)
    return max(1, min(cap, round(base * jitter)))


def send(message: PollMessage, delay_seconds: int) -> None:
    queue_url = get_settings().poll_queue_url
    if not queue_url:
        raise RuntimeError("POLL_QUEUE_URL is not set: the poll loop has no queue (the template gives it to the submit and poll functions)")
    client("sqs").send_message(
        QueueUrl=queue_url,
        MessageBody=message.to_body(),
        DelaySeconds=max(0, min(MAX_SQS_DELAY_SECONDS, delay_seconds)),
        MessageAttributes={"jobId": {"DataType": "String", "StringValue": message.job_id}},
    )


def start(job_id: str) -> bool:
    """Start a job's poll loop right after its submit; False (logged) when the first message could
    not be sent: the job is not lost, the reconciler's sweep polls it after the callback grace."""
    delay = delay_before(1)
    try:
        send(PollMessage(job_id, 1), delay)
    except Exception as exc:
        logger.warning("poll loop not started; the reconciler's sweep polls the job", extra={"job_id": job_id, "reason": str(exc)[:300]})
        return False
    logger.info("poll loop started", extra={"job_id": job_id, "delay_seconds": delay})
    return True


def handle_poll_message(body: str, message_id: str, *, now: float | None = None, rng: random.Random | None = None) -> PollResult:
    """One message of a poll loop (see the module's docstring). Raises only for what a retry can
    mend (AWS errors): the message then comes back and takes its own step again."""
    try:
        message = PollMessage.from_body(body)
    except ValueError as exc:
        logger.error("dropped a message that is not a poll message", extra={"message_id": message_id, "reason": str(exc)})
        return PollResult.MALFORMED
    store = JobStore()
    job = store.get(message.job_id)
    if job is None or job.state != JobState.SUBMITTED:
        return _log(PollResult.FINISHED, message, state=job.state.value if job else None)
    redelivered = message.seq == job.poll_seq and job.item.get("pollMessageId") == message_id
    if message.seq != job.poll_seq + 1 and not redelivered:
        return _log(PollResult.STALE, message, poll_seq=job.poll_seq)
    task_id = job.provider_task_id
    if not task_id:
        return _log(PollResult.FINISHED, message, reason="the job has no provider task id")
    provider = get_provider(str(job.provider))
    outcome, throttled = _poll(provider.poll, task_id)
    if outcome is not None and outcome.state != "running":
        result = apply_outcome(store, job, provider, outcome)
        if result != "rejected":  # a refused result URL settles nothing: keep polling to the deadline
            return _log(PollResult.SETTLED, message, applied=result)
    settings = get_settings()
    current = time.time() if now is None else now
    deadline = float(job.item.get("deadlineAt") or math.inf)
    if current >= deadline:
        return _log(PollResult.DEADLINE, message)
    if message.seq >= settings.poll_max_polls:
        return _log(PollResult.MAX_POLLS, message)
    if not store.advance_poll(job.id, message.seq, message_id):
        return _log(PollResult.STALE, message, reason="another message took this step")
    # The last delay ends on the deadline, so the final poll comes at it rather than past it.
    delay = min(delay_before(message.seq + 1, throttled=throttled, rng=rng), max(1, math.ceil(deadline - current)))
    send(PollMessage(job.id, message.seq + 1), delay)
    return _log(PollResult.CONTINUED, message, delay_seconds=delay, throttled=throttled)


def _poll(poll: Callable[[str], Outcome], task_id: str) -> tuple[Outcome | None, bool]:
    """The provider's answer and whether it asked us to slow down; (None, ...) when it could not
    answer (that counts as still running: the loop backs off and asks again)."""
    try:
        outcome = poll(task_id)
    except ProviderError as exc:
        logger.warning("poll failed; asked again later", extra={"reason": str(exc)[:300]})
        return None, exc.code in THROTTLED_CODES or exc.status == 429
    # The Runway adapter marks a THROTTLED task (still queued at the provider); others never do.
    return outcome, bool(getattr(outcome, "throttled", False))


def _log(result: PollResult, message: PollMessage, **extra: object) -> PollResult:
    logger.info("poll message handled", extra={"job_id": message.job_id, "seq": message.seq, "result": result.value, **extra})
    return result
