"""Which stream records become job events, and what the events carry."""

from __future__ import annotations

import json
from typing import Any

from aleph_pipeline.notifications import SOURCE, JobEventDetail, transition_event

JOB = "0123456789abcdef0123456789abcdef"


def image(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "jobId": JOB,
        "status": status,
        "inputBucket": "aleph-input",
        "sidecarKey": "incoming/a/shot.json",
        "outputPrefix": f"a/shot/{JOB}/",
        "createdAt": "2026-01-01T00:00:00.000Z",
        "updatedAt": "2026-01-01T00:01:00.000Z",
        **extra,
    }


def test_completed_transition_becomes_a_job_completed_event() -> None:
    outputs = [{"key": f"a/shot/{JOB}/result.mp4", "size": 10}, {"key": f"a/shot/{JOB}/cover.png", "size": 2}]
    entry = transition_event(image("SUCCEEDED"), image("COMPLETED", provider="kie", model="aleph", videoKey="incoming/a/shot.mp4", outputs=outputs, cost=1.5))
    assert entry is not None
    assert (entry["Source"], entry["DetailType"], entry["EventBusName"]) == (SOURCE, "Job Completed", "default")
    detail = JobEventDetail.model_validate_json(entry["Detail"])
    assert detail.state == "COMPLETED"
    assert detail.inputKey == "incoming/a/shot.mp4"
    assert detail.outputKeys == [f"a/shot/{JOB}/result.mp4", f"a/shot/{JOB}/cover.png", f"a/shot/{JOB}/job.json"]
    assert detail.cost == 1.5
    assert detail.error is None


def test_failed_transition_carries_the_error() -> None:
    error = {"code": "invalid_sidecar", "message": "unknown field `colour`", "stage": "intake", "retryable": False, "hint": "Fix it."}
    entry = transition_event(image("RECEIVED"), image("FAILED", error=error))
    assert entry is not None and entry["DetailType"] == "Job Failed"
    detail = json.loads(entry["Detail"])
    assert detail["error"] == error
    assert detail["outputKeys"] == [f"a/shot/{JOB}/error.json"]
    assert detail["provider"] is None


def test_other_records_make_no_event() -> None:
    assert transition_event(image("RECEIVED"), image("SUBMITTED")) is None
    assert transition_event(image("FAILED"), image("FAILED", providerTaskId="late")) is None  # a later write, not the transition
    assert transition_event(None, {"jobId": "waiting#b/k", "waitingJobIds": {JOB}}) is None  # a pairing note
    assert transition_event(image("SUBMITTED"), None) is None
