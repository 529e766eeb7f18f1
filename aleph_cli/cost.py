"""``aleph cost``: what the stack's jobs cost, from the jobs table.

A job counts once its submission was claimed (a request may have reached the provider): at the
cost the provider reported, else at the estimate made before it was sent (marked as estimated).
Jobs refused by the budget or failed before submission cost nothing and are not listed.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aleph_cli.errors import CliError
from aleph_cli.stack import StackInfo

STATES = ("RECEIVED", "SUBMITTED", "SUCCEEDED", "COMPLETED", "FAILED")
GROUPS = ("provider", "day", "folder")


def add_parser(commands: Any) -> None:
    cost = commands.add_parser("cost", help="spend per provider, day or folder (real cost, else the estimate, marked)")
    cost.add_argument("--since", help="a UTC date or time, e.g. 2026-12-01 (default: the start of this month)")
    cost.add_argument("--by", choices=GROUPS, default="provider")
    cost.set_defaults(command=cmd_cost)


@dataclass
class Spend:
    jobs: int = 0
    usd: Decimal = Decimal(0)
    estimated_usd: Decimal = Decimal(0)  # the part of ``usd`` that is estimates (no real cost reported)


def cmd_cost(stack: StackInfo, args: argparse.Namespace) -> int:
    since = parse_since(args.since)
    rows = summarize(charged_jobs(stack, since), args.by, stack.input_prefix)
    print(render(rows, args.by, since))
    return 0


def parse_since(value: str | None) -> str:
    """An ISO time to compare ``updatedAt`` with (the start of this UTC month by default)."""
    if value is None:
        return datetime.now(UTC).strftime("%Y-%m-01T00:00:00.000Z")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CliError(f"--since {value!r}: expected a date or time such as 2026-12-01 or 2026-12-01T08:00:00Z") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def charged_jobs(stack: StackInfo, since: str) -> list[dict[str, Any]]:
    """Jobs changed since ``since`` that may have cost something, from the status index (no scan)."""
    found: list[dict[str, Any]] = []
    for state in STATES:
        query: dict[str, Any] = {
            "IndexName": "by-status",
            "KeyConditionExpression": "#status = :state AND updatedAt >= :since",
            # A reported cost, or an estimate of a job that was (or may have been) sent.
            "FilterExpression": "attribute_exists(cost) OR (attribute_exists(costEstimate) AND attribute_exists(submission))",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":state": state, ":since": since},
        }
        while True:
            page = stack.table.query(**query)
            found.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return found


def summarize(jobs: Iterable[Mapping[str, Any]], by: str, input_prefix: str) -> dict[str, Spend]:
    """Spend per group, groups in order."""
    groups: dict[str, Spend] = {}
    for job in jobs:
        key = _group(job, by, input_prefix)
        spend = groups.setdefault(key, Spend())
        spend.jobs += 1
        if job.get("cost") is not None:
            spend.usd += Decimal(str(job["cost"]))
        else:
            spend.usd += Decimal(str(job["costEstimate"]))
            spend.estimated_usd += Decimal(str(job["costEstimate"]))
    return dict(sorted(groups.items()))


def _group(job: Mapping[str, Any], by: str, input_prefix: str) -> str:
    if by == "provider":
        return str(job.get("provider") or "-")
    if by == "day":
        return str(job.get("createdAt") or "-")[:10]
    key = str(job.get("sidecarKey") or "")
    key = key[len(input_prefix) :] if key.startswith(input_prefix) else key
    folder, _, _name = key.rpartition("/")
    return folder or "(top)"


def render(rows: Mapping[str, Spend], by: str, since: str) -> str:
    if not rows:
        return f"no spend since {since}"
    total = Spend()
    for spend in rows.values():
        total.jobs += spend.jobs
        total.usd += spend.usd
        total.estimated_usd += spend.estimated_usd
    width = max(len(by), len("total"), *(len(key) for key in rows))
    lines = [f"{by:<{width}}  {'jobs':>6}  {'USD':>10}", *(_line(key, spend, width) for key, spend in rows.items()), _line("total", total, width)]
    if total.estimated_usd:
        lines.append("* includes estimates made before sending, for jobs whose provider reports no cost")
    lines.append(f"since {since}")
    return "\n".join(lines)


def _line(key: str, spend: Spend, width: int) -> str:
    marked = f"  * ({spend.estimated_usd:.2f} estimated)" if spend.estimated_usd else ""
    return f"{key:<{width}}  {spend.jobs:>6}  {spend.usd:>10.2f}{marked}"
