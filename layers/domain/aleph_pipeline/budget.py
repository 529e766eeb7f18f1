"""Daily and monthly spend limits, held across every Lambda instance by counters in the jobs table.

A job reserves its cost estimate before its submission is claimed: one DynamoDB transaction puts
the job's reservation (``budget#job#<jobId>``, written once: a retry of the job finds it and
reserves nothing more) and ADDs the estimate to the day's and the month's counters
(``budget#day#2026-12-01``, ``budget#month#2026-12``), each on the condition that it stays within
its budget. Of any number of jobs reserving at once, exactly those that fit get through. The
reservation is settled with the real cost once the job completes (the counters move by the
difference), or released when the job failed before anything was sent. Counter and reservation
items have no ``status``: they are never jobs, and never in the status index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from . import telemetry
from .config import get_settings
from .errors import STAGE_SUBMIT, JobError
from .jobs import _table, now_iso
from .log import logger

# The share of a budget at which BudgetUsedPercent's alarm fires (template.yaml, BudgetAlarm).
ALARM_PERCENT = 80
RESERVED, SETTLED, RELEASED = "reserved", "settled", "released"


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
    items: list[dict[str, Any]] = [
        {
            "Put": {
                "TableName": table.name,
                "Item": {
                    "jobId": reservation_key(job_id),
                    "state": RESERVED,
                    "amount": amount,
                    "provider": provider,
                    "counters": [period.key for period in budgets],
                    "reservedAt": now_iso(),
                },
                "ConditionExpression": "attribute_not_exists(jobId)",
            }
        }
    ]
    for period in budgets:
        items.append(
            {
                "Update": {
                    "TableName": table.name,
                    "Key": {"jobId": period.key},
                    "UpdateExpression": "ADD spent :amount SET #limit = :limit",
                    # DynamoDB conditions do no arithmetic: the room left is worked out here.
                    "ConditionExpression": "attribute_not_exists(spent) OR spent <= :room",
                    "ExpressionAttributeNames": {"#limit": "limit"},
                    "ExpressionAttributeValues": {":amount": amount, ":limit": usd(period.limit), ":room": usd(period.limit) - amount},
                }
            }
        )
    if amount > usd(min(period.limit for period in budgets)):
        _refuse(table, budgets, estimate)
    try:
        table.meta.client.transact_write_items(TransactItems=items)
    except Exception as exc:
        reasons = [str(reason.get("Code", "")) for reason in getattr(exc, "response", {}).get("CancellationReasons", [])]
        if not reasons:
            raise
        if reasons[0] == "ConditionalCheckFailed":
            logger.info("budget already reserved for this job")
            return
        if "ConditionalCheckFailed" in reasons:
            _refuse(table, [period for period, reason in zip(budgets, reasons[1:], strict=True) if reason == "ConditionalCheckFailed"], estimate)
        raise
    for period in budgets:
        spent = _spent(table, period.key)
        if period.limit > 0:
            telemetry.emit("BudgetUsedPercent", round(100 * spent / period.limit, 2), job_id, Budget=period.name)


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
    table = table if table is not None else _table()
    reservation = table.get_item(Key={"jobId": reservation_key(job_id)}, ConsistentRead=True).get("Item")
    if not reservation or reservation.get("state") != RESERVED:
        return  # no budget was set when it was submitted, or it is closed already
    amount = Decimal(reservation["amount"])
    delta = (usd(cost) if cost is not None else amount) - amount
    values: dict[str, Any] = {":state": state, ":reserved": RESERVED, ":at": now_iso()}
    expression = "SET #state = :state, closedAt = :at"
    if cost is not None and state == SETTLED:
        expression += ", cost = :cost"
        values[":cost"] = usd(cost)
    items: list[dict[str, Any]] = [
        {
            "Update": {
                "TableName": table.name,
                "Key": {"jobId": reservation_key(job_id)},
                "UpdateExpression": expression,
                "ConditionExpression": "#state = :reserved",
                "ExpressionAttributeNames": {"#state": "state"},
                "ExpressionAttributeValues": values,
            }
        }
    ]
    if delta:
        for key in reservation.get("counters", []):
            items.append(
                {
                    "Update": {
                        "TableName": table.name,
                        "Key": {"jobId": key},
                        "UpdateExpression": "ADD spent :delta",
                        "ExpressionAttributeValues": {":delta": delta},
                    }
                }
            )
    try:
        table.meta.client.transact_write_items(TransactItems=items)
    except Exception as exc:
        if getattr(exc, "response", {}).get("CancellationReasons"):
            return  # another attempt closed it first
        raise
