"""Intake's one decision (``intake.decide``), case by case: facts in, one action out, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from aleph_pipeline.errors import JobError
from aleph_pipeline.intake import SIDECAR_REPLACED, Act, IntakeFacts, SubmitPlan, decide
from aleph_pipeline.jobs import JobState

PLAN: Any = SubmitPlan.__new__(SubmitPlan)  # its content does not matter to the decision
BAD_FIELD = JobError("invalid_sidecar", "field `nope` is not allowed", "intake")
NO_KEY = JobError("provider_not_configured", "no API key for provider `kie`", "submit", retryable=True)


@pytest.mark.parametrize(
    ("facts", "act", "error"),
    [
        # A redelivery after a crash between the FAILED write and error.json: write it again.
        (IntakeFacts(JobState.FAILED), Act.REWRITE_ERROR, None),
        # Moved on already: a duplicate or late event changes nothing.
        (IntakeFacts(JobState.SUBMITTED, claimed=True), Act.NOTHING, None),
        (IntakeFacts(JobState.SUCCEEDED, claimed=True), Act.NOTHING, None),
        (IntakeFacts(JobState.COMPLETED, claimed=True), Act.NOTHING, None),
        # Claimed and still RECEIVED: a submit is in flight or its answer was ambiguous. Never again.
        (IntakeFacts(JobState.RECEIVED, claimed=True, plan=PLAN), Act.NOTHING, None),
        (IntakeFacts(JobState.RECEIVED, claimed=True, sidecar_current=False), Act.NOTHING, None),
        # The sidecar key holds another version now (a re-upload, even of the same bytes): this job ends.
        (IntakeFacts(JobState.RECEIVED, sidecar_current=False), Act.FAIL, SIDECAR_REPLACED),
        (IntakeFacts(JobState.RECEIVED, sidecar_current=False, plan=PLAN), Act.FAIL, SIDECAR_REPLACED),
        # Bad input fails at once, before any provider; a replaced sidecar wins over its problems.
        (IntakeFacts(JobState.RECEIVED, problem=BAD_FIELD), Act.FAIL, BAD_FIELD),
        (IntakeFacts(JobState.RECEIVED, problem=BAD_FIELD, attempts_left=False), Act.FAIL, BAD_FIELD),
        # A problem that may pass (a key not configured yet) is retried while attempts are left.
        (IntakeFacts(JobState.RECEIVED, problem=NO_KEY), Act.RETRY, None),
        (IntakeFacts(JobState.RECEIVED, problem=NO_KEY, attempts_left=False), Act.FAIL, NO_KEY),
        # Everything fine but the video: wait for it (the pairing deadline is the reconciler's).
        (IntakeFacts(JobState.RECEIVED, awaiting="incoming/shot.<mp4|mov|webm|avi|m4v>"), Act.WAIT, None),
        # Everything here and checked: submit.
        (IntakeFacts(JobState.RECEIVED, plan=PLAN), Act.SUBMIT, None),
        (IntakeFacts(JobState.RECEIVED, plan=PLAN, attempts_left=False), Act.SUBMIT, None),
    ],
)
def test_each_case_has_one_action(facts: IntakeFacts, act: Act, error: JobError | None) -> None:
    action = decide(facts)
    assert action.act == act
    assert action.error == error


def test_a_wait_says_what_it_waits_for() -> None:
    assert "incoming/shot.mp4" in decide(IntakeFacts(JobState.RECEIVED, awaiting="incoming/shot.mp4")).reason
