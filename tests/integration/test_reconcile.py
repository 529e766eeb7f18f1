"""The reconciler's decisions against DynamoDB on moto server (the status index, real queries)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from aleph_pipeline.jobs import JobStore
from aleph_pipeline.reconcile import reconcile

from .conftest import clear_caches

LONG_AGO = "2020-01-01T00:00:00.000Z"


@pytest.fixture
def indexed(aws: dict[str, Any]) -> dict[str, Any]:
    """The table as the template declares it: with the by-status index."""
    client = aws["table"].meta.client
    client.update_table(
        TableName=aws["table_name"],
        AttributeDefinitions=[{"AttributeName": "status", "AttributeType": "S"}, {"AttributeName": "updatedAt", "AttributeType": "S"}],
        GlobalSecondaryIndexUpdates=[
            {
                "Create": {
                    "IndexName": "by-status",
                    "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}, {"AttributeName": "updatedAt", "KeyType": "RANGE"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            }
        ],
    )
    return aws


def put(aws: dict[str, Any], job_id: str, status: str, **extra: Any) -> None:
    item = {"jobId": job_id, "status": status, "provider": "kie", "outputPrefix": f"x/{job_id}/", "history": [], "updatedAt": LONG_AGO, **extra}
    aws["table"].put_item(Item=item)


def state(job_id: str) -> str:
    job = JobStore().get(job_id)
    assert job is not None
    return job.state.value


def test_succeeded_job_is_nudged_then_failed(indexed: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINALIZE_MAX_NUDGES", "2")
    monkeypatch.setenv("FINALIZE_GRACE_SECONDS", "0")
    clear_caches()
    job_id = "a" * 32
    put(indexed, job_id, "SUCCEEDED", result={"videos": ["https://kie.ai/v.mp4"]})
    later = time.time() + 5
    assert reconcile(later).nudged == 1
    assert reconcile(later + 5).nudged == 1
    job = JobStore().get(job_id)
    assert job is not None
    assert (job.state.value, int(job.item["finalizeNudges"])) == ("SUCCEEDED", 2)
    report = reconcile(later + 10)
    assert (report.nudged, report.timed_out) == (0, 1)
    assert state(job_id) == "FAILED"
    error = json.loads(indexed["s3"].get_object(Bucket=indexed["output"], Key=f"x/{job_id}/error.json")["Body"].read())
    assert error["code"] == "result_unavailable"


def test_pairing_deadline_and_fresh_jobs(indexed: dict[str, Any]) -> None:
    now = time.time()
    put(indexed, "b" * 32, "RECEIVED", pairingDeadline=int(now) - 10)
    put(indexed, "c" * 32, "RECEIVED", pairingDeadline=int(now) + 3600)
    put(indexed, "d" * 32, "RECEIVED", pairingDeadline=int(now) - 10, updatedAt="2999-01-01T00:00:00.000Z")  # not stale yet
    report = reconcile(now)
    assert report.timed_out == 1
    assert [state(job_id * 32) for job_id in "bcd"] == ["FAILED", "RECEIVED", "RECEIVED"]


def test_unconfirmed_submission_is_never_resubmitted_and_times_out(indexed: dict[str, Any]) -> None:
    now = time.time()
    claim = {"claimId": "x", "claimedAt": "2020-01-01T00:00:00.000Z"}
    put(indexed, "e" * 32, "RECEIVED", submission=claim, deadlineAt=int(now) + 3600)
    put(indexed, "f" * 32, "RECEIVED", submission=claim, deadlineAt=int(now) - 1)
    report = reconcile(now)
    assert report.polled == 0  # kie assigns its own task ids: nothing of ours to poll by
    assert [state("e" * 32), state("f" * 32)] == ["RECEIVED", "FAILED"]


def test_a_failing_provider_poll_does_not_stop_the_sweep(indexed: dict[str, Any]) -> None:
    now = time.time()
    for letter in "0123":
        put(indexed, letter * 32, "SUBMITTED", providerTaskId=f"task-{letter}", deadlineAt=int(now) + 3600)
    report = reconcile(now)
    # The provider's port is closed: each poll fails, each job stays SUBMITTED and is marked as polled.
    assert (report.examined, report.polled, report.errors) == (4, 4, 0)
    assert {state(letter * 32) for letter in "0123"} == {"SUBMITTED"}
    assert all("lastPolledAt" in JobStore().get(letter * 32).item for letter in "0123")  # type: ignore[union-attr]
