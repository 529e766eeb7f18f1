"""Tasks in flight per provider: at most N of a provider's tasks running at once, across every
Lambda instance (Runway's tier concurrency; crun's when configured).

Mechanism: N slot items ``flight#<provider>#<i>`` (i < N) in the jobs table (no ``status``, so
they stay out of the status index), each naming the job that holds it (``holder``) and when it
took it (``acquiredAt``). Chosen over one counter item: a counter cannot tell which job holds a
unit, so a release cut off (a function killed between the job's end and the decrement) would leak
it for ever; a slot names its holder, and anyone can check that holder's job.

- Acquire (``acquire``, right before the claim): a consistent read of the N items. The
  job already holding one keeps it (a redelivery; its ``acquiredAt`` is refreshed, conditional on
  ``holder = :me``); else a conditional write on a free one (``attribute_not_exists(holder)``),
  or a takeover of one whose holder is no longer in flight, conditional on ``holder = :stale AND
  acquiredAt = :seen`` (so a holder that refreshed meanwhile keeps it). A holder is in flight
  while its job is SUBMITTED at this provider, or RECEIVED with a claim (``submission``) or an
  unanswered send (``ambiguousSend``), or RECEIVED unclaimed but took the slot less than
  ``CLAIM_GRACE_SECONDS`` ago (between the slot and the claim). A job gone, ended or moved on
  frees its slot for the next acquirer: self-heal, so no slot is stuck for ever.
- The slot is recorded on the job with its claim (``flightSlot``); ``jobs.JobStore`` releases it
  (conditional on ``holder = :me``, best effort) when the job's task ends (SUCCEEDED or FAILED),
  or its claim is given back as not taken, or it moves on along its chain.

None free: the job waits in RECEIVED (``flightWait`` on the job: since when, and the N of N its
status shows), its pairing deadline gives way to the job's deadline (the video is here) and a
``{"retryJob": id}`` message brings it back after ``RECHECK_SECONDS``, 5-15 s, jittered: a Runway
video task takes a minute or more, so a slot freed is idle a few seconds at most, the job's
deadline (which runs while it waits) loses little, and the jitter spreads the waiting jobs'
rechecks, so when many wait a freed slot is taken within a second or two, at N reads a recheck
(no release can wake a waiter: the functions that end tasks have no submit queue). Waiting never
sends anything, so it never sends twice.

Chosen over a queue per provider with SQS's maximum concurrency: that bounds the invocations that
submit, not the tasks that run at the provider for minutes after the invocation has ended.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .config import get_settings
from .jobs import JobState, JobStore, conditional_update
from .log import logger
from .pacing import SlotTooFar, requeue

# From /work/shared/providers.md: Runway queues a tier's extra tasks as THROTTLED (tier 1: one
# video task at once; tiers 2-5: 3, 5, 10, 20, per model per project); crun's is set per account
# with ProviderConcurrency; the others publish none.
DEFAULT_CONCURRENCY: dict[str, int] = {"runway": 1}
# Between taking a slot and the claim there are milliseconds; an unclaimed holder older than this
# was cut off (or went back to waiting) and its slot is free for another job.
CLAIM_GRACE_SECONDS = 60.0
RECHECK_SECONDS = (5, 15)
# Rounds of read-then-write when other instances take the free slots first.
ACQUIRE_ROUNDS = 3
WAIT_REASON = "waiting for a provider slot"


def limit_for(provider: str) -> int | None:
    """The provider's tasks in flight at most: the stack's ``ProviderConcurrency`` over the defaults."""
    configured = get_settings().provider_concurrency
    return configured[provider] if provider in configured else DEFAULT_CONCURRENCY.get(provider)


def slot_key(provider: str, index: int) -> str:
    return f"flight#{provider}#{index}"


@dataclass(frozen=True)
class Slots:
    """What one look at a provider's slots found."""

    held: int | None  # the index this job holds already
    free: list[int]
    taken: dict[int, dict[str, Any]]  # index -> the slot item


class NoTaskSlot(SlotTooFar):
    """Every task slot of the provider stayed taken longer than a chained job may wait."""

    def __init__(self, provider: str, wait_seconds: float, limit: int) -> None:
        super().__init__(provider, wait_seconds)
        self.args = (f"no task slot at {provider} for {wait_seconds:.0f} s ({limit} of {limit} tasks in flight)",)


def clock() -> float:
    return time.time()


def acquire(table: Any, provider: str, job_id: str, limit: int) -> int | None:
    """The index of the slot this job holds now (kept or taken), or None: all N are in flight."""
    for _ in range(ACQUIRE_ROUNDS):
        slots = _look(table, provider, job_id, limit)
        if slots.held is not None:
            if _write(table, slot_key(provider, slots.held), job_id, "holder = :job", {":job": job_id}):
                return slots.held
            continue  # taken over just now (this job had gone stale): look again
        for index in random.sample(slots.free, len(slots.free)):  # spread instances over the free ones
            if _write(table, slot_key(provider, index), job_id, "attribute_not_exists(holder)", {}):
                return index
        stale = _stale(table, provider, slots.taken)
        for index in stale:
            seen = slots.taken[index]
            condition = "holder = :stale AND acquiredAt = :seen"
            if _write(table, slot_key(provider, index), job_id, condition, {":stale": seen["holder"], ":seen": seen["acquiredAt"]}):
                logger.info("took over a task slot whose job is no longer in flight", extra={"provider": provider, "stale_job_id": seen["holder"]})
                return index
        if not slots.free and not stale:
            return None
    return None


def release(table: Any, provider: str, index: int, job_id: str) -> None:
    """Give the slot back if this job still holds it (best effort: ``acquire`` heals a lost one)."""
    conditional_update(
        table,
        Key={"jobId": slot_key(provider, index)},
        UpdateExpression="REMOVE holder, acquiredAt",
        ConditionExpression="holder = :job",
        ExpressionAttributeValues={":job": job_id},
    )


def take_or_wait(store: JobStore, job_id: str, provider: str, *, wait_at_most: float | None = None) -> tuple[bool, dict[str, Any] | None]:
    """Called right before the claim: (waits, slot). ``waits``: the job waits in RECEIVED for a
    task slot and a delayed message takes it up. Else ``slot`` is the ``flightSlot`` to record
    with the claim (None: the provider has no limit). With ``wait_at_most`` (a chained job), a
    job that has waited longer than that raises ``NoTaskSlot``: intake moves it on, unsent."""
    limit = limit_for(provider)
    if limit is None:
        return False, None
    index = acquire(store.table, provider, job_id, limit)
    if index is not None:
        return False, {"provider": provider, "index": index}
    job = store.get(job_id)
    if job is None or job.state != JobState.RECEIVED or job.submission_claimed:
        return True, None  # moved on meanwhile; nothing to send
    now = clock()
    waited = job.item.get("flightWait")
    since = float(waited["since"]) if isinstance(waited, dict) and waited.get("provider") == provider else now
    if wait_at_most is not None and now - since > wait_at_most:
        raise NoTaskSlot(provider, now - since, limit)
    if not store.hold_back(job_id, {"flightWait": {"provider": provider, "since": round(since, 3), "at": round(clock(), 3), "limit": limit}}):
        return True, None
    delay = random.uniform(*RECHECK_SECONDS)  # noqa: S311  # jitter, not a secret
    requeue(job_id, delay + 1)  # requeue delays a second less than asked (for its pace slots)
    logger.info(WAIT_REASON, extra={"provider": provider, "in_flight": limit, "recheck_seconds": round(delay)})
    return True, None


def _look(table: Any, provider: str, job_id: str, limit: int) -> Slots:
    items = _read_items(table, [slot_key(provider, index) for index in range(limit)])
    by_index = {int(str(item["jobId"]).rsplit("#", 1)[1]): item for item in items}
    held = next((index for index, item in by_index.items() if item.get("holder") == job_id), None)
    taken = {index: item for index, item in by_index.items() if "holder" in item}
    return Slots(held, [index for index in range(limit) if index not in taken], taken)


def _read_items(table: Any, job_ids: list[str]) -> list[dict[str, Any]]:
    """The items of ``job_ids`` that exist, each one consistent GetItem: the functions' roles grant
    GetItem on the table (not BatchGetItem), and N is small (Runway's largest tier is 20)."""
    items = (table.get_item(Key={"jobId": job_id}, ConsistentRead=True).get("Item") for job_id in job_ids)
    return [item for item in items if item]


def _stale(table: Any, provider: str, taken: dict[int, dict[str, Any]]) -> list[int]:
    """The taken slots whose holder job is no longer in flight at ``provider``."""
    if not taken:
        return []
    holders = {str(item["jobId"]): item for item in _read_items(table, sorted({str(item["holder"]) for item in taken.values()}))}
    now = clock()
    return [index for index, item in taken.items() if not _in_flight(holders.get(str(item["holder"])), provider, float(item.get("acquiredAt", 0)), now)]


def _in_flight(job: dict[str, Any] | None, provider: str, acquired_at: float, now: float) -> bool:
    if job is None or "status" not in job:
        return False
    if job["status"] == JobState.SUBMITTED.value:
        return bool(job.get("provider") == provider)
    if job["status"] != JobState.RECEIVED.value:
        return False  # SUCCEEDED, COMPLETED or FAILED: its task ended
    if "submission" in job or "ambiguousSend" in job:
        return bool(job.get("provider") == provider)
    return now - acquired_at < CLAIM_GRACE_SECONDS


def _write(table: Any, key: str, job_id: str, condition: str, values: dict[str, Any]) -> bool:
    """Name ``job_id`` the slot's holder, now, if ``condition`` holds."""
    written = conditional_update(
        table,
        Key={"jobId": key},
        UpdateExpression="SET holder = :me, acquiredAt = :at",
        ConditionExpression=condition,
        ExpressionAttributeValues={**values, ":me": job_id, ":at": Decimal(str(round(clock(), 3)))},
    )
    return written is not None


def keep_only_recorded(store: JobStore, job_id: str, slot: dict[str, Any]) -> None:
    """After a claim lost to another attempt of the same job: give ``slot`` back unless it is the
    one that attempt recorded (two attempts at once may each have taken a free slot)."""
    job = store.get(job_id)
    recorded = job.item.get("flightSlot") if job else None
    if not (isinstance(recorded, dict) and recorded.get("provider") == slot["provider"] and int(recorded.get("index", -1)) == slot["index"]):
        release(store.table, str(slot["provider"]), int(slot["index"]), job_id)
