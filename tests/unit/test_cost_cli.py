"""``aleph cost``: grouping, the estimate marks, and --since (the table query runs in tests/integration/test_budget.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from aleph_cli.cost import parse_since, render, summarize
from aleph_cli.errors import CliError
from aleph_cli.main import build_parser

JOBS = [
    {
        "provider": "runware",
        "cost": Decimal("1.6968"),
        "costEstimate": Decimal("2.8"),
        "createdAt": "2026-12-01T09:00:00.000Z",
        "sidecarKey": "incoming/team-a/shot1.json",
    },
    {"provider": "kie", "costEstimate": Decimal("1.25"), "createdAt": "2026-12-01T10:00:00.000Z", "sidecarKey": "incoming/team-a/shot2.json"},
    {"provider": "kie", "costEstimate": Decimal("1.25"), "createdAt": "2026-12-02T10:00:00.000Z", "sidecarKey": "incoming/team-b/x/shot3.json"},
    {"provider": "kie", "cost": 0, "costEstimate": Decimal("1.25"), "createdAt": "2026-12-02T11:00:00.000Z", "sidecarKey": "incoming/shot4.json"},
]


def test_spend_by_provider_uses_the_real_cost_and_marks_estimates() -> None:
    rows = summarize(JOBS, "provider", "incoming/")
    assert list(rows) == ["kie", "runware"]
    assert (rows["kie"].jobs, rows["kie"].usd, rows["kie"].estimated_usd) == (3, Decimal("2.50"), Decimal("2.50"))
    assert (rows["runware"].usd, rows["runware"].estimated_usd) == (Decimal("1.6968"), 0)  # reported, not estimated
    text = render(rows, "provider", "2026-12-01T00:00:00.000Z").splitlines()
    assert text[1].split() == ["kie", "3", "2.50", "*", "(2.50", "estimated)"]
    assert text[2].split() == ["runware", "1", "1.70"]
    assert text[3].split()[:3] == ["total", "4", "4.20"]
    assert text[4].startswith("* includes estimates")


def test_spend_by_day_and_by_folder() -> None:
    assert {day: spend.jobs for day, spend in summarize(JOBS, "day", "incoming/").items()} == {"2026-12-01": 2, "2026-12-02": 2}
    by_folder = summarize(JOBS, "folder", "incoming/")
    assert {folder: spend.usd for folder, spend in by_folder.items()} == {"(top)": 0, "team-a": Decimal("2.9468"), "team-b/x": Decimal("1.25")}


def test_no_spend_says_so() -> None:
    assert render({}, "provider", "2026-12-01T00:00:00.000Z") == "no spend since 2026-12-01T00:00:00.000Z"


def test_since_takes_a_date_or_a_time_and_refuses_anything_else() -> None:
    assert parse_since("2026-12-01") == "2026-12-01T00:00:00.000Z"
    assert parse_since("2026-12-01T08:30:00+01:00") == "2026-12-01T07:30:00.000Z"
    assert parse_since(None).endswith("-01T00:00:00.000Z")
    with pytest.raises(CliError, match="--since 'last week'"):
        parse_since("last week")


def test_the_command_is_registered() -> None:
    args = build_parser().parse_args(["cost", "--by", "folder", "--since", "2026-12-01"])
    assert (args.by, args.since, args.command.__name__) == ("folder", "2026-12-01", "cmd_cost")
