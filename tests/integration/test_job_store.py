"""The job state machine against DynamoDB on moto server (real HTTP)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from aleph_pipeline.errors import JobError
from aleph_pipeline.jobs import JobState, JobStore


@pytest.fixture
def store(moto_server: str) -> Iterator[JobStore]:
    dynamodb = boto3.resource("dynamodb", endpoint_url=moto_server)
    name = f"jobs-{uuid.uuid4().hex[:8]}"
    table: Any = dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "jobId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "jobId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    yield JobStore(table)
    table.delete()


def new_job(store: JobStore) -> str:
    job_id = uuid.uuid4().hex
    store.create(job_id, {"outputPrefix": f"x/{job_id}/", "sidecarKey": "incoming/x.json"})
    return job_id


def states(store: JobStore, job_id: str) -> list[str]:
    job = store.get(job_id)
    assert job is not None
    return [entry["state"] for entry in job.item["history"]]


def test_create_is_idempotent(store: JobStore) -> None:
    job_id = uuid.uuid4().hex
    _first, created = store.create(job_id, {"outputPrefix": "a/"})
    again, created_again = store.create(job_id, {"outputPrefix": "b/"})
    assert created and not created_again
    assert again.output_prefix == "a/"


def test_forward_path_records_history(store: JobStore) -> None:
    job_id = new_job(store)
    assert store.claim_submission(job_id, 4102444800)
    assert store.mark_submitted(job_id, "task-1")
    assert store.mark_succeeded(job_id, ("https://h/v.mp4",), "https://h/c.png", 1.5, "task-1")
    assert store.mark_completed(job_id, [{"key": "k", "size": 1}], "2026-01-01T00:00:00.000Z")
    assert states(store, job_id) == ["RECEIVED", "SUBMITTED", "SUCCEEDED", "COMPLETED"]
    job = store.get(job_id)
    assert job is not None
    assert job.to_manifest()["cost"] == 1.5
    assert job.provider_task_id == "task-1"


def test_no_backward_or_repeated_moves(store: JobStore) -> None:
    job_id = new_job(store)
    store.mark_submitted(job_id, "t")
    assert not store.mark_submitted(job_id, "t2")
    store.mark_succeeded(job_id, ("u",), None, None, None)
    assert not store.mark_succeeded(job_id, ("u2",), None, None, None)
    store.mark_completed(job_id, [], "2026-01-01T00:00:00.000Z")
    assert not store.mark_failed(job_id, JobError("x", "late failure", "provider"))
    job = store.get(job_id)
    assert job is not None
    assert job.state == JobState.COMPLETED
    assert job.provider_task_id == "t"
    assert "error" not in job.item


def test_only_one_submission_claim_and_the_token_outlives_a_release(store: JobStore) -> None:
    job_id = new_job(store)
    claim = store.claim_submission(job_id, 4102444800, {"provider": "kie"})
    assert claim
    assert store.claim_submission(job_id, 4102444800) is None
    job = store.get(job_id)
    assert job is not None
    assert job.provider == "kie"
    assert job.token_matches(claim.token)
    assert not job.token_matches("token-b")
    assert not job.token_matches(None)
    store.release_claim(job_id, "someone-else", "429")
    assert store.claim_submission(job_id, 4102444800) is None
    store.release_claim(job_id, claim.claim_id, "HTTP 429: slow down")
    again = store.claim_submission(job_id, 4102444800)
    assert again is not None and again.claim_id != claim.claim_id
    # A retry sends the same callback URL: the first attempt's token stays valid.
    assert again.token == claim.token
    job = store.get(job_id)
    assert job is not None and job.token_matches(claim.token)


def test_an_unanswered_submit_keeps_its_claim_and_says_so(store: JobStore) -> None:
    job_id = new_job(store)
    claim = store.claim_submission(job_id, 4102444800)
    assert claim is not None
    assert not store.note_unanswered(job_id, "someone-else", "HTTP 502")
    assert store.note_unanswered(job_id, claim.claim_id, "kie: HTTP 502 (the request may have been taken)")
    job = store.get(job_id)
    assert job is not None
    assert job.submission_claimed and job.submit_unanswered
    assert job.waiting_for is not None and "unanswered submit" in job.waiting_for
    assert store.claim_submission(job_id, 4102444800) is None  # never sent again


def test_fast_callback_before_submit_is_recorded(store: JobStore) -> None:
    job_id = new_job(store)
    store.claim_submission(job_id, 4102444800)
    assert store.mark_succeeded(job_id, ("u",), None, None, "task-9")
    job = store.get(job_id)
    assert job is not None
    assert (job.state, job.provider_task_id) == (JobState.SUCCEEDED, "task-9")  # written with the state, in one update
    assert not store.mark_submitted(job_id, "task-9")
    job = store.get(job_id)
    assert job is not None
    assert (job.state, job.provider_task_id) == (JobState.SUCCEEDED, "task-9")


def test_failure_record(store: JobStore) -> None:
    job_id = new_job(store)
    assert store.mark_failed(job_id, JobError("generation_failed", "moderated", "provider"))
    job = store.get(job_id)
    assert job is not None
    assert job.item["error"] == {
        "code": "generation_failed",
        "message": "moderated",
        "stage": "provider",
        "retryable": False,
        "hint": job.item["error"]["hint"],
    }
    assert not store.claim_submission(job_id, 4102444800)


def test_waiters_are_found_by_video_key(store: JobStore) -> None:
    store.add_waiter("b", "incoming/shot", "job-1", 10)
    store.add_waiter("b", "incoming/shot", "job-2", 10)
    store.add_waiter("b", "incoming/clip.mp4", "job-3", 10)
    assert store.waiters("b", ["incoming/shot.mp4", "incoming/shot"]) == ["job-1", "job-2"]
    assert store.waiters("b", ["incoming/clip.mp4", "incoming/clip"]) == ["job-3"]
    assert store.get("waiting#b/incoming/shot") is None  # a note is not a job


def test_intake_failure_cannot_fail_a_claimed_job(store: JobStore) -> None:
    job_id = new_job(store)
    assert store.update_details(job_id, {"awaitingVideo": "incoming/x.mp4"})
    assert store.claim_submission(job_id, 4102444800, {"provider": "kie"})
    assert not store.update_details(job_id, {"provider": "apikley"})
    assert not store.mark_failed(job_id, JobError("invalid_sidecar", "late check", "intake"), unless_claimed=True)
    job = store.get(job_id)
    assert job is not None
    assert (job.state, job.provider) == (JobState.RECEIVED, "kie")
    assert store.mark_failed(job_id, JobError("provider_rejected", "no credits", "submit"))


def test_results_arriving_one_by_one_complete_the_job_once_all_are_in(store: JobStore) -> None:
    job_id = uuid.uuid4().hex
    store.create(job_id, {"outputPrefix": f"x/{job_id}/", "expectedResults": 3})
    store.mark_submitted(job_id, "task-1")
    first = {"id": "v-b", "url": "https://h/b.mp4", "cost": 0.1, "seed": 5}
    assert not store.record_result(job_id, first, task_id="task-1")
    assert not store.record_result(job_id, first, task_id="task-1")  # a repeated webhook
    assert not store.record_result(job_id, {"id": "v-a", "url": "https://h/a.mp4", "cost": 0.2}, task_id="task-1")
    job = store.get(job_id)
    assert job is not None
    assert job.state == JobState.SUBMITTED
    assert sorted(job.item["resultItems"]) == ["v-a", "v-b"]
    assert store.record_result(job_id, {"id": "v-c", "url": "https://h/c.mp4"}, task_id="task-1")
    assert not store.record_result(job_id, {"id": "v-d", "url": "https://h/d.mp4"}, task_id="task-1")  # one too many: too late
    job = store.get(job_id)
    assert job is not None
    assert job.state == JobState.SUCCEEDED
    manifest = job.to_manifest()
    assert manifest["result"]["videos"] == ["https://h/b.mp4", "https://h/a.mp4", "https://h/c.mp4"]  # arrival order
    assert manifest["cost"] == pytest.approx(0.3)
    assert states(store, job_id) == ["RECEIVED", "SUBMITTED", "SUCCEEDED"]


def test_a_single_result_job_succeeds_with_its_cover_and_ignores_repeats(store: JobStore) -> None:
    job_id = new_job(store)  # no expectedResults recorded: one result
    item = {"id": "1", "url": "https://h/v.mp4", "cover": "https://h/c.png", "cost": 2}
    assert store.record_result(job_id, item)
    assert not store.record_result(job_id, item)
    job = store.get(job_id)
    assert job is not None
    assert job.to_manifest()["result"] == {"videos": ["https://h/v.mp4"], "cover": "https://h/c.png"}
    assert job.to_manifest()["cost"] == 2


def test_results_after_a_failure_change_nothing(store: JobStore) -> None:
    job_id = new_job(store)
    store.mark_failed(job_id, JobError("generation_failed", "no", "provider"))
    assert not store.record_result(job_id, {"id": "1", "url": "https://h/v.mp4"})
    job = store.get(job_id)
    assert job is not None
    assert job.state == JobState.FAILED
    assert "result" not in job.item


def test_a_deadline_failure_only_applies_to_the_state_that_was_examined(store: JobStore) -> None:
    job_id = new_job(store)
    store.mark_submitted(job_id, "task")
    store.mark_succeeded(job_id, ("u",), None, None, "task")  # a callback, just after the reconciler looked
    assert not store.mark_failed(job_id, JobError("deadline_exceeded", "too slow", "provider"), only_from=JobState.SUBMITTED)
    job = store.get(job_id)
    assert job is not None
    assert job.state == JobState.SUCCEEDED
    assert store.mark_failed(job_id, JobError("result_unavailable", "gone", "finalize"), only_from=JobState.SUCCEEDED)


def test_a_result_recorded_by_an_attempt_cut_off_before_the_move_completes_on_the_repeat(store: JobStore) -> None:
    """Found by the chaos run's kills: the result was written, the move to SUCCEEDED never was,
    and every repeat of the callback or poll was taken for a duplicate: the job stayed SUBMITTED."""
    job_id = new_job(store)
    store.mark_submitted(job_id, "task-1")
    item = {"id": "v-1", "url": "https://h/v.mp4"}
    store.table.update_item(  # what the cut-off attempt managed: its first write only
        Key={"jobId": job_id},
        UpdateExpression="SET resultItems = :items, resultOrder = :order",
        ExpressionAttributeValues={":items": {"v-1": item}, ":order": ["v-1"]},
    )
    assert store.record_result(job_id, item, task_id="task-1")
    assert states(store, job_id) == ["RECEIVED", "SUBMITTED", "SUCCEEDED"]
    assert not store.record_result(job_id, item, task_id="task-1")  # a repeat after that changes nothing
    assert states(store, job_id) == ["RECEIVED", "SUBMITTED", "SUCCEEDED"]


def test_two_attempts_moving_an_unclaimed_job_on_from_the_same_provider_record_it_once(store: JobStore) -> None:
    job_id = new_job(store)
    no_slot = JobError("provider_unavailable", "no slot at kie for 630 s", "submit", retryable=True)
    # Both attempts saw the job with nothing tried yet; the second one's move finds it moved already.
    assert store.move_on(job_id, None, "kie", "aleph", no_slot, tried_before=0)
    assert not store.move_on(job_id, None, "kie", "aleph", no_slot, tried_before=0)
    job = store.get(job_id)
    assert job is not None and [entry["provider"] for entry in job.providers_tried] == ["kie"]
    # The next move, from the provider the job went on to, counts the one entry it saw.
    assert not store.move_on(job_id, None, "apikley", "aleph", no_slot, tried_before=0)
    assert store.move_on(job_id, None, "apikley", "aleph", no_slot, tried_before=1)
    job = store.get(job_id)
    assert job is not None and [entry["provider"] for entry in job.providers_tried] == ["kie", "apikley"]
