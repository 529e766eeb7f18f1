"""Pace each provider: a limit of new tasks per window that holds across every Lambda instance.

Mechanism: one item per provider in the jobs table (key ``pace#<provider>``; no ``status``, so it
stays out of the status index) holds the provider's *next free slot*, ``nextFreeAt`` (GCRA's
theoretical arrival time, the generic cell rate algorithm): a limit of ``count`` per ``window``
seconds spaces slots ``window / count`` apart. Taking a slot is one conditional write (an idle
provider: the slot is now, the next one an interval later) or, when that condition fails, one
atomic ``ADD`` of the interval, whose answer tells this caller's slot. No read, no retry loop and
no lock: any number of instances take distinct slots, in order, at one write each.

Slots only bring the jobs in, evenly spaced at the rate the gate keeps (the limit's interval plus a
small margin) and with no burst; the limit itself is held by a gate on the same item that every
send must pass: the times of the provider's last ``count`` sends (``sends``, oldest first), and a
send is let through only when the ``count``-th last one is more than one window (plus the margin)
old: a sliding window, which is what "20 per 10 s" may well be and what the simulator enforces.
Recording a send is one conditional write on the item's version (``sendsVersion``): of two
senders at once, one gets through and the other looks again. A job comes to the gate from a few
seconds before its slot (a delayed message is due a second or two early) and may go as soon as
the window lets it: a job that reached its slot late (a slow delivery, a busy instance) leaves
room in the window that the jobs behind it use, so lateness is made up instead of lost.

Chosen over a queue per provider with its own concurrency because a queue bounds tasks in flight,
not new tasks per window (kie's limit), and a queue per provider means event sources and stack
parameters per provider; the item costs two or three small writes per submission (the slot, the
gate) and works for every provider.

A job whose slot lies ahead waits in RECEIVED: its slot is recorded on the job (``paceSlot``,
so a redelivery reuses it rather than taking another), its pairing deadline is cleared (the video
is here; the job now fails only at its own deadline) and a small ``{"retryJob": id}`` message
goes on the pace queue, delayed until the slot (SQS delays at most 900 s: a longer wait
re-queues again, jittered). The pace queue has pollers of its own, so a due message never waits
behind a backlog of S3 notifications on the submit queue (a drop of many clips) and misses its
slot. A fresh message starts at receive count 1, so waiting never exhausts the queue's
``maxReceiveCount``. The claim still guards the submission itself: waiting never sends anything,
so it can never send twice.

A 429 never fails the job (``slow_down``). When our own sends fill the provider's window, it is
our pace meeting the provider's clock a little early (the way from the gate to the provider
varies by more than the margin): the refused job goes back to the gate one interval later and
keeps its place, and nothing else waits. Otherwise another client uses the account: the
provider's next slot is pushed out and its gate shut (``pausedUntil``) for two intervals (each
further 429 again), so every instance waits, and the refused job takes a new slot. A job whose
earlier request may have made its task (``Claim.sent_before``) keeps intake's own path instead.

A job with a failover chain waits at most ``PaceMaxWaitSeconds`` for its slot: a slot further out
than that is not taken at all (the ``ADD`` is conditional on the next free slot being within the
bound, so no slot is left taken for nothing) and ``hold_for_slot`` raises ``SlotTooFar``: intake
moves the job on to the next provider of its chain. Nothing was sent, so nothing can be paid twice.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .clients import client
from .config import get_settings
from .errors import STAGE_SUBMIT, JobError, TransientError
from .jobs import JobState, JobStore, _conditional_failed, conditional_update
from .log import logger
from .providers import ProviderError

# From /work/shared/providers.md: kie.ai and apikley take 20 new tasks per 10 s per account;
# Runware queues, Runway queues over its tier's concurrency (THROTTLED), Replicate and crun
# publish no limit (crun is set with ProviderRateLimits when the account has one).
DEFAULT_LIMITS: dict[str, str] = {"kie": "20/10", "apikley": "20/10"}
MAX_SQS_DELAY_SECONDS = 900
# A slot this close is waited for in the invocation rather than by a delayed message, at the gate,
# which is waited for until this long past the slot at most. SQS delays are whole seconds and a
# delivery lags by up to a poll: a message is delayed to a second before its slot, and the rest is
# waited here. The whole wait (4 s at most) fits in the margin ``intake.seconds_needed_to_submit``
# keeps per record.
INLINE_WAIT_SECONDS = 2.0
# A 429 pushes the provider's next slot out by this many intervals (a sliding window frees its
# oldest request within about one when we pace at the limit; each further 429 pushes again), or,
# for a provider with no configured limit, by DEFAULT_BACKOFF_SECONDS.
BACKOFF_INTERVALS = 2
DEFAULT_BACKOFF_SECONDS = 10.0
# The gate's window is this much longer than the limit's (and slots this much further apart): a
# request's way from the gate to the provider (the claim, the connection) varies, and a sliding
# window counts arrivals. At most 1/SEND_MARGIN of the limit is used (0.97). A 429 our own pace
# explains costs one retry an interval later (``slow_down``), so the margin is kept small.
SEND_MARGIN = 1.03
WAIT_REASON = "waiting for a provider slot"


@dataclass(frozen=True)
class RateLimit:
    """``count`` new tasks per ``window`` seconds."""

    count: int
    window: float

    @classmethod
    def parse(cls, text: str, provider: str) -> RateLimit | None:
        """``"20/10"`` (20 per 10 s); ``""`` or ``"none"`` for no limit."""
        text = text.strip().lower()
        if text in ("", "none"):
            return None
        count, sep, window = text.partition("/")
        try:
            limit = cls(int(count), float(window)) if sep else None
        except ValueError:
            limit = None
        if limit is None or limit.count < 1 or not 0 < limit.window <= 86400:
            raise ValueError(f"ProviderRateLimits: `{provider}` must be `<tasks>/<seconds>` (e.g. `20/10`) or `none`, not `{text}`")
        return limit

    @property
    def interval(self) -> float:
        return self.window / self.count

    @property
    def spacing(self) -> float:
        """The time between two slots: the interval, with half the gate's margin. Slots a little
        closer than the gate lets sends through keep a few jobs waiting at the gate, so the
        time a stall cost (no job delivered for seconds) is made up from them instead of lost."""
        return round(self.interval * (1 + (SEND_MARGIN - 1) / 2), 3)  # whole milliseconds, as the pace item keeps them


class SlotTooFar(Exception):
    """The provider's next free slot is further out than the job may wait; no slot was taken."""

    def __init__(self, provider: str, wait_seconds: float) -> None:
        super().__init__(f"no slot at {provider} for {wait_seconds:.0f} s")
        self.provider = provider
        self.wait_seconds = wait_seconds

    def to_job_error(self) -> JobError:
        """The record of the provider the job moved on from (``providersTried``)."""
        return JobError("provider_unavailable", str(self), STAGE_SUBMIT, retryable=True)


def clock() -> float:
    return time.time()


def limit_for(provider: str) -> RateLimit | None:
    """The provider's limit: the stack's ``ProviderRateLimits`` over the defaults."""
    configured = get_settings().provider_rate_limits
    return RateLimit.parse(configured.get(provider, DEFAULT_LIMITS.get(provider, "")), provider)


def pace_key(provider: str) -> str:
    return f"pace#{provider}"


def is_rate_limited(exc: ProviderError) -> bool:
    """The provider said "too many requests" (any protocol's 429): the request was not taken."""
    return exc.kind == "retryable" and (exc.status == 429 or exc.code == "429")


class Pacer:
    """The ``pace#<provider>`` items: slots taken and pushed out, atomically across instances."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def take_slot(self, provider: str, limit: RateLimit, now: float, wait_at_most: float | None = None) -> float:
        """The time (epoch seconds) this caller may send its request: ``now`` or later. With
        ``wait_at_most``, a slot further out than that is not taken: ``SlotTooFar``."""
        now = round(now, 3)  # the item keeps milliseconds
        key = {"jobId": pace_key(provider)}
        try:
            # Idle (no slot taken ahead of now): this request goes now.
            self.table.update_item(
                Key=key,
                UpdateExpression="SET nextFreeAt = :next",
                ConditionExpression="attribute_not_exists(nextFreeAt) OR nextFreeAt <= :now",
                ExpressionAttributeValues={":next": _decimal(now + limit.spacing), ":now": _decimal(now)},
            )
            return now
        except Exception as exc:
            if not _conditional_failed(exc):
                raise
        take: dict[str, Any] = {"UpdateExpression": "ADD nextFreeAt :step", "ExpressionAttributeValues": {":step": _decimal(limit.spacing)}}
        if wait_at_most is not None:
            # This caller's slot is the next free one (the value before the ADD): within the bound, or not taken.
            take["ConditionExpression"] = "nextFreeAt <= :latest"
            take["ExpressionAttributeValues"][":latest"] = _decimal(now + wait_at_most)
        try:
            answer = self.table.update_item(Key=key, ReturnValues="UPDATED_NEW", **take)
        except Exception as exc:
            if wait_at_most is None or not _conditional_failed(exc):
                raise
            item = self.table.get_item(Key=key, ConsistentRead=True).get("Item") or {}
            raise SlotTooFar(provider, float(item.get("nextFreeAt", now + wait_at_most)) - now) from None
        return max(now, float(answer["Attributes"]["nextFreeAt"]) - limit.spacing)

    def push_out(self, provider: str, until: float) -> None:
        """No slot before ``until``, and no send either (the gate opens then): slots already
        handed out wait at the gate and, if it stays shut, take new ones."""
        conditional_update(
            self.table,
            Key={"jobId": pace_key(provider)},
            UpdateExpression="SET nextFreeAt = :until, pausedUntil = :until",
            ConditionExpression="attribute_not_exists(nextFreeAt) OR nextFreeAt < :until",
            ExpressionAttributeValues={":until": _decimal(until)},
        )

    def open_gate(self, provider: str, limit: RateLimit, give_up_at: float) -> float | None:
        """Record a send now if the provider's window has room for it, waiting for that until
        ``give_up_at`` (epoch seconds) at most: the time recorded, or None if the gate stayed shut.

        The window: at most ``limit.count`` sends in any ``limit.window * SEND_MARGIN`` seconds,
        counted from the times of the last ``count`` sends kept on the pace item."""
        key = {"jobId": pace_key(provider)}
        window = limit.window * SEND_MARGIN
        while True:
            item = self.table.get_item(Key=key, ConsistentRead=True).get("Item") or {}
            sends = [float(at) for at in item.get("sends", ())]
            now = round(clock(), 3)
            opens_at = float(item.get("pausedUntil", 0))
            if len(sends) >= limit.count:
                opens_at = max(opens_at, sends[-limit.count] + window)
            if opens_at <= now:
                if self._record_sends(provider, [*sends, now][-limit.count :], int(item.get("sendsVersion", 0))):
                    return now
                continue  # another send was recorded meanwhile: look again
            if opens_at > give_up_at:
                return None
            time.sleep(max(opens_at - clock(), 0.005))  # until the window has room; another sender may still get there first

    def unsend(self, provider: str, sent_at: float) -> None:
        """Take a send the provider refused (429) out of the gate's record: the provider did not
        count it, so the gate must not either (it would keep that room unused for a window)."""
        for _ in range(5):  # another send recorded meanwhile: look again
            item = self.table.get_item(Key={"jobId": pace_key(provider)}, ConsistentRead=True).get("Item") or {}
            sends = [float(at) for at in item.get("sends", ())]
            if round(sent_at, 3) not in sends:
                return  # out of the record already (older than the last ``count``)
            sends.remove(round(sent_at, 3))
            if self._record_sends(provider, sends, int(item.get("sendsVersion", 0))):
                return

    def _record_sends(self, provider: str, sends: list[float], version: int) -> bool:
        """Write the gate's record of sends if it is still at ``version``; False if another
        sender wrote it meanwhile."""
        written = conditional_update(
            self.table,
            Key={"jobId": pace_key(provider)},
            UpdateExpression="SET sends = :sends, sendsVersion = :next",
            ConditionExpression="attribute_not_exists(sendsVersion) OR sendsVersion = :version",
            ExpressionAttributeValues={":sends": [_decimal(at) for at in sends], ":next": version + 1, ":version": version},
        )
        return written is not None

    def own_sends_fill_window(self, provider: str, limit: RateLimit, now: float) -> bool:
        """Whether the provider's last ``count`` sends (ours) all fall in the window before ``now``
        (with the gate's margin and one interval more)."""
        item = self.table.get_item(Key={"jobId": pace_key(provider)}, ConsistentRead=True).get("Item") or {}
        sends = [float(at) for at in item.get("sends", ())]
        return len(sends) >= limit.count and now - sends[-limit.count] < limit.window * SEND_MARGIN + limit.interval

    def paused_until(self, provider: str) -> float | None:
        """For a provider without a limit: the time a 429 pushed its slots out to, if ahead."""
        item = self.table.get_item(Key={"jobId": pace_key(provider)}).get("Item")
        return float(item["nextFreeAt"]) if item and "nextFreeAt" in item else None


def hold_for_slot(
    store: JobStore, job_id: str, provider: str, *, may_send_now: bool = True, wait_at_most: float | None = None, sent: dict[str, Any] | None = None
) -> bool:
    """Called just before the claim, after every check. False: send now. True: the job waits in
    RECEIVED and a delayed message takes it up at its slot (or the job moved on meanwhile).

    ``wait_at_most`` (a job with another provider to go to): a fresh slot further out than that
    raises ``SlotTooFar`` with no slot taken. A slot the job holds already is kept."""
    now = clock()
    limit = limit_for(provider)
    pacer = Pacer(store.table)
    paused = pacer.paused_until(provider) if limit is None else None
    if limit is None and (paused is None or paused <= now):
        return False  # no limit, and no 429 slowed the provider down: send now (one read, of the pace item)
    job = store.get(job_id)
    if job is None or job.state != JobState.RECEIVED or job.submission_claimed:
        return False  # the claim that follows settles it
    held = job.item.get("paceSlot")
    fresh = not (isinstance(held, dict) and held.get("provider") == provider)
    if not fresh:
        at = float(held["at"])  # type: ignore[index]  # a redelivery keeps the slot it holds
    elif limit is not None:
        at = pacer.take_slot(provider, limit, now, wait_at_most)
    else:
        # No limit to space the slots by: spread the waiting jobs over one backoff period.
        at = float(paused or now) + random.uniform(0, DEFAULT_BACKOFF_SECONDS)  # noqa: S311  # jitter, not a secret
        if wait_at_most is not None and at - now > wait_at_most:
            raise SlotTooFar(provider, at - now)
    if may_send_now and at - now <= INLINE_WAIT_SECONDS:
        if limit is None:
            _wait_inline(at - now)
        sent_at = None if limit is None else pacer.open_gate(provider, limit, give_up_at=max(at, now) + INLINE_WAIT_SECONDS)
        if limit is None or sent_at is not None:
            if sent is not None and sent_at is not None:
                sent["paceSentAt"] = sent_at  # on the claim: a 429 takes it out of the gate's record
            if not fresh:
                store.forget(job_id, "paceSlot")  # used: a retry after another refusal takes a new one
            return False
        if wait_at_most is None:
            # The gate stayed shut: the window is full of jobs made late by a stall, catching up.
            # This job's slot was part of the schedule, so it keeps its place: back at the gate
            # an interval from now, not behind every slot handed out since (that would stretch
            # the whole schedule by one slot for each job a stall made late).
            at, fresh = clock() + limit.interval, True
        else:
            at, fresh = pacer.take_slot(provider, limit, clock(), wait_at_most), True  # a chained job: a later slot, within its bound
    if fresh and not store.hold_back(job_id, {"paceSlot": {"provider": provider, "at": _decimal(at)}}):
        return True  # the job moved on meanwhile (failed, or claimed elsewhere)
    requeue(job_id, at - clock())
    logger.info(WAIT_REASON, extra={"provider": provider, "wait_seconds": round(at - now, 1)})
    return True


def slow_down(store: JobStore, job_id: str, claim_id: str, refusal: str) -> None:
    """After a 429: give the claim back (the request was not taken) and let the job try again;
    it is not failed for it. When our own sends fill the provider's window, the 429 is our pace
    meeting the provider's clock a little early (the way from the gate to the provider varies):
    the job goes back to the gate after one interval, keeping its place. Otherwise another client
    uses the account: the provider's slots are pushed out by two intervals and the job takes a
    new slot."""
    store.release_claim(job_id, claim_id, refusal)
    job = store.get(job_id)
    if job is None or job.provider is None:
        return
    limit = limit_for(job.provider)
    pacer = Pacer(store.table)
    now = clock()
    if limit is not None and pacer.own_sends_fill_window(job.provider, limit, now):
        if job.item.get("paceSentAt") is not None:
            pacer.unsend(job.provider, float(job.item["paceSentAt"]))
        at = now + limit.interval
        if store.hold_back(job_id, {"paceSlot": {"provider": job.provider, "at": _decimal(at)}}):
            requeue(job_id, at - clock() + 1)  # (requeue delays a second less than asked)
        return
    pacer.push_out(job.provider, now + (limit.interval * BACKOFF_INTERVALS if limit else DEFAULT_BACKOFF_SECONDS))
    store.forget(job_id, "paceSlot")
    if not hold_for_slot(store, job_id, job.provider, may_send_now=False):
        raise TransientError(f"{job.provider} answered 429; the event is retried")


def retry_job_id(body: str) -> str | None:
    """The job id of a ``{"retryJob": id}`` message (``requeue``), None for any other body."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    job_id = document.get("retryJob") if isinstance(document, dict) else None
    return job_id if isinstance(job_id, str) and job_id else None


def requeue(job_id: str, wait_seconds: float) -> None:
    """Put the job on the pace queue, to be taken up after ``wait_seconds``."""
    queue_url = get_settings().pace_queue_url
    if not queue_url:
        # A function without the pace queue: the job waits for the reconciler's next look;
        # nothing was sent.
        raise TransientError(f"{WAIT_REASON} in {wait_seconds:.0f} s")
    # Longer waits come back early and re-queue, jittered so waiting jobs do not arrive together.
    jitter = random.randint(0, 60)  # noqa: S311  # jitter, not a secret
    delay = MAX_SQS_DELAY_SECONDS - jitter if wait_seconds > MAX_SQS_DELAY_SECONDS else max(0, math.floor(wait_seconds) - 1)
    client("sqs").send_message(QueueUrl=queue_url, MessageBody=json.dumps({"retryJob": job_id}), DelaySeconds=delay)


def _wait_inline(seconds: float) -> None:
    if seconds > 0:
        time.sleep(min(seconds, INLINE_WAIT_SECONDS))  # bounded: cheaper than a message


def _decimal(value: float) -> Decimal:
    return Decimal(str(round(value, 3)))
