"""Least privilege, proven over the e2e run: every AWS call the handlers made is one their role allows.

The session stack logs each call (``--record-aws-calls``, stack.json's ``aws_calls_log``); this
module runs after every other e2e test (tests/e2e/conftest.py orders it last) and audits the log
against the roles as SAM expands them (local/iam_audit.py). Granted pairs no call used fail too,
but only when the whole e2e suite ran: a partial run uses only part of the grants.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from local.iam_audit import audit_stacks

from .conftest import LEAST_PRIVILEGE_MODULE, OPENED_STACKS, Stack

pytestmark = pytest.mark.e2e

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parents[1]


def _whole_suite_ran(session: pytest.Session) -> bool:
    collected = {item.path.name for item in session.items if item.path.parent == E2E_DIR}
    every = {path.name for path in E2E_DIR.glob("test_*.py")}
    return collected == every and session.testsfailed == 0


def test_every_recorded_aws_call_is_allowed_by_its_role(stack: Stack, request: pytest.FixtureRequest) -> None:
    """The calls of every stack the e2e run opened (the session's, the reconciler's, the corpus's)."""
    missing = [info.get("workdir") or info.get("api_url") for info in OPENED_STACKS if not info.get("aws_calls_log")]
    assert OPENED_STACKS and not missing, f"stacks that recorded no AWS calls (start them with --record-aws-calls): {missing}"
    whole_run = _whole_suite_ran(request.session)
    report = audit_stacks(OPENED_STACKS, Path(stack.info.get("template") or REPO_ROOT / "template.yaml"), check_unused=whole_run)
    assert report.calls > 0, "the handlers' AWS calls were not recorded"
    assert report.failures() == [], "\n".join(report.failures())
    if not whole_run:
        pytest.skip(f"{report.calls} calls allowed; the unused-grant check needs the whole e2e suite ({LEAST_PRIVILEGE_MODULE} ran with part of it)")
