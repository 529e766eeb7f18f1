"""Daily and monthly spend limits, held across every Lambda instance by counters in the jobs table.

A job reserves its cost estimate before its submission is claimed. Its reservation item
(``budget#job#<jobId>``) is written once, so a retry of the job reserves nothing more; then the
estimate is ADDed to the day's and the month's counters (``budget#day#2026-12-01``,
``budget#month#2026-12``), each in one conditional update that holds only while the counter stays
within its budget: of any number of jobs reserving at once, exactly those that fit get through.
A job that does not fit gives back what it took from the other counter. The reservation is
settled at the real cost when the job completes (the counters move by the difference), or
released when the job failed before anything was sent. A crash between two of these writes can
only leave a counter too high, never too low: the budget may refuse early, it never lets a job
overspend. Plain conditional updates, not a transaction: transactions on a hot counter item
cancel each other (TransactionConflict). Counter and reservation items have no ``status``: they
are never jobs, and never in the status index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from . import telemetry
from .config import get_settings
from .errors import STAGE_SUBMIT, JobError
from .jobs import _conditional_failed, _table, conditional_update, now_iso
from .log import logger

# The share of a budget at which BudgetUsedPercent's alarm fires (template.yaml, BudgetAlarm).
ALARM_PERCENT = 80
RESERVING, RESERVED, SETTLED, RELEASED = "reserving", "reserved", "settled", "released"


@dataclass(frozen=True)
class Period:
    name: str  # "daily" or "monthly"
    key: str  # the counter's item key
    limit: float


def periods(at: datetime | None = None) -> list[Period]:
    """The budgets set (none, one or both), each with the counter it is kept in at ``at``."""
    settings = get_settings()
    at = at or datetime.now(UTC)
    found = []
    if settings.daily_budget_usd is not None:
        found.append(Period("daily", f"budget#day#{at:%Y-%m-%d}", settings.daily_budget_usd))
    if settings.monthly_budget_usd is not None:
        found.append(Period("monthly", f"budget#month#{at:%Y-%m}", settings.monthly_budget_usd))
    return found


def reservation_key(job_id: str) -> str:
    return f"budget#job#{job_id}"


def usd(value: float) -> Decimal:
    return Decimal(str(round(value, 6)))


def reserve(job_id: str, provider: str, estimate: float | None, table: Any | None = None) -> None:
    """Reserve ``estimate`` (USD) in every budget set, once per job; raise ``JobError``
    (``budget_exceeded``) when it does not fit, or when a budget is set and no price is known."""
    budgets = periods()
    if not budgets:
        return
    if estimate is None:
        raise JobError(
            "budget_exceeded",
            f"a budget is set but no price is known for provider `{provider}`, so this job's cost cannot be estimated; "
            "set its price in the ProviderPrices parameter",
            STAGE_SUBMIT,
        )
    table = table if table is not None else _table()
    amount = usd(estimate)
    too_small = [period for period in budgets if amount > usd(period.limit)]
    if too_small:
        _refuse(table, too_small, estimate)
    reservation = _open(table, job_id, provider, amount)
    if reservation.get("state") != RESERVING:
        logger.info("budget already reserved for this job", extra={"state": reservation.get("state")})
        return
    counted = set(reservation.get("counted", ()))
    amount = Decimal(reservation["amount"])
    for period in budgets:
        if period.key in counted:
            continue  # counted by an attempt cut off before it finished
        if not _add(table, period.key, amount, room=usd(period.limit) - amount, limit=usd(period.limit)):
            for key in counted:  # give back what this job took from the other budget
                _add(table, key, -amount)
            _set_state(table, job_id, RELEASED, RESERVING)
            _refuse(table, [period], estimate)
        table.update_item(Key={"jobId": reservation_key(job_id)}, UpdateExpression="ADD counted :key", ExpressionAttributeValues={":key": {period.key}})
        counted.add(period.key)
    _set_state(table, job_id, RESERVED, RESERVING)
    for period in budgets:
        if period.limit > 0:
            telemetry.emit("BudgetUsedPercent", round(100 * _spent(table, period.key) / period.limit, 2), job_id, Budget=period.name)


def _open(table: Any, job_id: str, provider: str, amount: Decimal) -> dict[str, Any]:
    """The job's reservation: made now (``reserving``), or the one an earlier attempt made. A
    released one (refused, or given back before a move to another provider) is made again, at
    this estimate."""
    item = {"jobId": reservation_key(job_id), "state": RESERVING, "amount": amount, "provider": provider, "reservedAt": now_iso()}
    try:
        table.put_item(
            Item=item,
            ConditionExpression="attribute_not_exists(jobId) OR #state = :released",
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues={":released": RELEASED},
        )
    except Exception as exc:
        if not _conditional_failed(exc):
            raise
        found: dict[str, Any] = table.get_item(Key={"jobId": reservation_key(job_id)}, ConsistentRead=True)["Item"]
        return found
    return item


def _add(table: Any, key: str, amount: Decimal, *, room: Decimal | None = None, limit: Decimal | None = None) -> bool:
    """ADD ``amount`` to a counter; with ``room``, only while it holds at most ``room`` (DynamoDB
    conditions do no arithmetic: the room left is worked out by the caller). False when it did not fit."""
    update: dict[str, Any] = {"Key": {"jobId": key}, "UpdateExpression": "ADD spent :amount", "ExpressionAttributeValues": {":amount": amount}}
    if room is not None:
        update["UpdateExpression"] += " SET #limit = :limit"
        update["ConditionExpression"] = "attribute_not_exists(spent) OR spent <= :room"
        update["ExpressionAttributeNames"] = {"#limit": "limit"}
        update["ExpressionAttributeValues"].update({":room": room, ":limit": limit})
    return conditional_update(table, **update) is not None


def _set_state(table: Any, job_id: str, state: str, expected: str, **extra: Any) -> bool:
    """Move the reservation from ``expected`` to ``state``; False when it was not in ``expected``."""
    names, values = {"#state": "state"}, {":state": state, ":expected": expected, ":at": now_iso()}
    sets = ["#state = :state", "closedAt = :at" if state in (SETTLED, RELEASED) else "reservedAt = if_not_exists(reservedAt, :at)"]
    for index, (name, value) in enumerate(extra.items()):
        names[f"#x{index}"] = name
        values[f":x{index}"] = value
        sets.append(f"#x{index} = :x{index}")
    written = conditional_update(
        table,
        Key={"jobId": reservation_key(job_id)},
        UpdateExpression="SET " + ", ".join(sets),
        ConditionExpression="#state = :expected",
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
    )
    return written is not None


def _spent(table: Any, key: str) -> float:
    item = table.get_item(Key={"jobId": key}, ConsistentRead=True).get("Item") or {}
    return float(item.get("spent", 0))


def _refuse(table: Any, over: list[Period], estimate: float) -> None:
    period = over[0]
    spent = _spent(table, period.key)
    raise JobError(
        "budget_exceeded",
        f"the {period.name} budget is ${period.limit:.2f}; ${spent:.2f} is spent or reserved in it already and this job's estimate is "
        f"${estimate:.2f}: it was not sent",
        STAGE_SUBMIT,
        details={"budget": period.name, "budgetUsd": period.limit, "spentUsd": spent, "estimateUsd": estimate},
    )


def settle(job_id: str, provider: str, cost: Any, table: Any | None = None) -> None:
    """The job completed: its reservation becomes its real cost (``cost``, USD) where the provider
    reported one (and that cost is counted in ProviderCostUSD); without one the estimate stands."""
    telemetry.provider_cost(job_id, provider, cost)
    real = float(cost) if isinstance(cost, int | float | Decimal) and not isinstance(cost, bool) else None
    _close(job_id, SETTLED, real, table)


def release(job_id: str, table: Any | None = None) -> None:
    """The job failed before anything was sent: give its reservation back to the budgets. Never
    called after a submission that may have been accepted (that job may be charged)."""
    _close(job_id, RELEASED, 0.0, table)


def _close(job_id: str, state: str, cost: float | None, table: Any | None) -> None:
    if not periods():
        return  # no budget is set: no reservation to read (and no read on every job's end)
    table = table if table is not None else _table()
    reservation = table.get_item(Key={"jobId": reservation_key(job_id)}, ConsistentRead=True).get("Item")
    if not reservation or reservation.get("state") != RESERVED:
        return  # no budget was set when it was submitted, or it is closed already
    amount = Decimal(reservation["amount"])
    extra = {"cost": usd(cost)} if cost is not None and state == SETTLED else {}
    # The reservation's state moves first, in one conditional write: of two attempts, one moves the counters.
    if not _set_state(table, job_id, state, RESERVED, **extra):
        return
    delta = (usd(cost) if cost is not None else amount) - amount
    if delta:
        for key in reservation.get("counted", ()):
            _add(table, key, delta)
