"""Tasks in flight per provider (``aleph_pipeline.inflight``) against moto server over real HTTP:
the slots hold across threads, are kept per job, released when a task ends and taken over from a
job no longer in flight."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from aleph_pipeline import inflight
from aleph_pipeline.errors import JobError, TransientError
from aleph_pipeline.intake import handle_object_created, handle_retry
from aleph_pipeline.jobs import JobState, JobStore
from aleph_pipeline.keys import job_id_for
from aleph_pipeline.storage import head
from local.media import make_clip

from .conftest import clear_caches

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("inflight") / "clip.mp4"
    make_clip(path, seconds=3, size="160x120")  # Runway's checks read the video's length
    return Path(path).read_bytes()


@pytest.fixture
def flight(aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    endpoint = aws["s3"].meta.endpoint_url
    sqs = boto3.client("sqs", endpoint_url=endpoint)
    queue_url = sqs.create_queue(QueueName=f"submit-{aws['table_name']}")["QueueUrl"]
    monkeypatch.setenv("CALLBACK_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("PACE_QUEUE_URL", queue_url)
    clear_caches()
    yield {**aws, "sqs": sqs, "queue_url": queue_url}


def holders(table: Any, provider: str, limit: int) -> list[str | None]:
    return [(table.get_item(Key={"jobId": inflight.slot_key(provider, index)}, ConsistentRead=True).get("Item") or {}).get("holder") for index in range(limit)]


def in_flight_job(store: JobStore, job_id: str) -> None:
    """A RECEIVED job that took its slot just now (within the claim grace): in flight."""
    store.create(job_id, {"outputPrefix": f"out/{job_id}/"})


def test_ten_jobs_at_once_from_threads_two_hold_the_two_slots(flight: dict[str, Any]) -> None:
    store = JobStore(flight["table"])
    job_ids = [f"job-{index}" for index in range(10)]
    for job_id in job_ids:
        in_flight_job(store, job_id)
    start = threading.Barrier(len(job_ids))
    got: dict[str, int | None] = {}

    def take(job_id: str) -> None:
        start.wait(timeout=10)
        got[job_id] = inflight.acquire(flight["table"], "runway", job_id, 2)

    threads = [threading.Thread(target=take, args=(job_id,)) for job_id in job_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winners = {job_id: index for job_id, index in got.items() if index is not None}
    assert len(got) == 10
    assert sorted(winners.values()) == [0, 1]
    assert sorted(h for h in holders(flight["table"], "runway", 2) if h) == sorted(winners)

    # One gives its slot back: another job takes it, and the rest still find none.
    done, index = next(iter(winners.items()))
    inflight.release(flight["table"], "runway", index, done)
    waiting = [job_id for job_id in job_ids if job_id not in winners]
    assert inflight.acquire(flight["table"], "runway", waiting[0], 2) == index
    assert inflight.acquire(flight["table"], "runway", waiting[1], 2) is None


def test_the_same_job_acquiring_twice_holds_one_slot(flight: dict[str, Any]) -> None:
    in_flight_job(JobStore(flight["table"]), "job-a")
    first = inflight.acquire(flight["table"], "runway", "job-a", 3)
    assert inflight.acquire(flight["table"], "runway", "job-a", 3) == first
    assert holders(flight["table"], "runway", 3).count("job-a") == 1


def test_a_slot_whose_job_ended_or_is_gone_is_taken_over_and_a_submitted_one_is_not(flight: dict[str, Any]) -> None:
    store = JobStore(flight["table"])
    for job_id in ("ended", "running", "next"):
        in_flight_job(store, job_id)
    assert inflight.acquire(flight["table"], "runway", "ended", 1) == 0
    store.mark_failed("ended", JobError("provider_failed", "gone wrong", "submit"))  # holds no flightSlot record: a release that was cut off
    assert holders(flight["table"], "runway", 1) == ["ended"]
    assert inflight.acquire(flight["table"], "runway", "running", 1) == 0  # taken over from the FAILED job

    store.update_details("running", {"provider": "runway"})
    store.claim_submission("running", 2_000_000_000)
    assert store.mark_submitted("running", "task-1")
    assert inflight.acquire(flight["table"], "runway", "next", 1) is None  # SUBMITTED: its task runs

    flight["table"].delete_item(Key={"jobId": "running"})
    assert inflight.acquire(flight["table"], "runway", "next", 1) == 0  # a holder that is gone frees its slot


def test_a_job_ending_gives_its_slot_back(flight: dict[str, Any]) -> None:
    store = JobStore(flight["table"])
    in_flight_job(store, "job-a")
    assert inflight.acquire(flight["table"], "runway", "job-a", 1) == 0
    claim = store.claim_submission("job-a", 2_000_000_000, {"provider": "runway", "flightSlot": {"provider": "runway", "index": 0}})
    assert claim is not None
    store.mark_submitted("job-a", "task-1")
    assert holders(flight["table"], "runway", 1) == ["job-a"]
    store.mark_failed("job-a", JobError("provider_failed", "the task failed", "provider"))
    assert holders(flight["table"], "runway", 1) == [None]


def upload_runway_pair(aws: dict[str, Any], stem: str, clip: bytes) -> str:
    aws["s3"].put_object(Bucket=aws["input"], Key=f"{stem}.mp4", Body=clip)
    aws["s3"].put_object(Bucket=aws["input"], Key=f"{stem}.json", Body=json.dumps({"prompt": "snow", "provider": "runway"}).encode())
    info = head(aws["input"], f"{stem}.json")
    assert info is not None
    return job_id_for(aws["input"], f"{stem}.json", info.version_marker)


def test_a_job_over_the_limit_waits_for_a_slot_and_a_refusal_gives_the_slot_back(flight: dict[str, Any], clip: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVIDER_CONCURRENCY", json.dumps({"runway": 1}))
    clear_caches()
    store = JobStore()
    in_flight_job(store, "other")
    assert inflight.acquire(store.table, "runway", "other", 1) == 0
    job_id = upload_runway_pair(flight, "incoming/w/one", clip)
    handle_object_created(flight["input"], "incoming/w/one.json")
    waiting = store.get(job_id)
    assert waiting is not None
    assert waiting.state == JobState.RECEIVED
    assert not waiting.submission_claimed
    assert waiting.waiting_for == "waiting for a provider slot (1 of 1 tasks in flight)"
    assert "pairingDeadline" not in waiting.item  # the job's own deadline holds now
    attributes = flight["sqs"].get_queue_attributes(QueueUrl=flight["queue_url"], AttributeNames=["ApproximateNumberOfMessagesDelayed"])["Attributes"]
    assert attributes["ApproximateNumberOfMessagesDelayed"] == "1"  # its recheck

    inflight.release(store.table, "runway", 0, "other")
    # Runway's endpoint is a closed port: the request is provably not taken, and the slot goes back.
    with pytest.raises(TransientError):
        handle_retry(job_id)
    retried = store.get(job_id)
    assert retried is not None
    assert retried.state == JobState.RECEIVED
    assert retried.item.get("lastRefusal")
    assert "flightSlot" not in retried.item
    assert "flightWait" not in retried.item
    assert holders(store.table, "runway", 1) == [None]


def test_a_bad_concurrency_names_the_provider() -> None:
    from aleph_pipeline.config import Settings

    wiring = {"jobs_table_name": "t", "input_bucket_name": "i", "output_bucket_name": "o"}
    with pytest.raises(ValueError, match="`runway` must be a whole number"):
        Settings.model_validate({**wiring, "provider_concurrency": {"runway": 0}})
    settings = Settings.model_validate({**wiring, "provider_concurrency": {"crun": "none", "runway": 3}})
    assert settings.provider_concurrency == {"crun": None, "runway": 3}


def test_a_chained_job_that_waited_past_the_bound_moves_on_unsent(flight: dict[str, Any], clip: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVIDER_CONCURRENCY", json.dumps({"runway": 1}))
    monkeypatch.setenv("PACE_MAX_WAIT_SECONDS", "0")  # moved on at the first recheck after its first wait
    clear_caches()
    store = JobStore()
    in_flight_job(store, "other")
    assert inflight.acquire(store.table, "runway", "other", 1) == 0
    flight["s3"].put_object(Bucket=flight["input"], Key="incoming/c/one.mp4", Body=clip)
    flight["s3"].put_object(Bucket=flight["input"], Key="incoming/c/one.json", Body=json.dumps({"prompt": "snow", "providers": ["runway", "kie"]}).encode())
    info = head(flight["input"], "incoming/c/one.json")
    assert info is not None
    job_id = job_id_for(flight["input"], "incoming/c/one.json", info.version_marker)
    handle_object_created(flight["input"], "incoming/c/one.json")
    first = store.get(job_id)
    assert first is not None
    assert first.waiting_for == "waiting for a provider slot (1 of 1 tasks in flight)"
    assert not first.providers_tried

    with pytest.raises(TransientError):  # kie's endpoint is a closed port: not taken, retried later
        handle_retry(job_id)
    moved = store.get(job_id)
    assert moved is not None
    assert moved.state == JobState.RECEIVED
    [tried] = moved.providers_tried
    assert tried["provider"] == "runway"
    assert "(1 of 1 tasks in flight)" in tried["reason"]
    assert moved.provider == "kie"
    assert "flightWait" not in moved.item
    assert holders(store.table, "runway", 1) == ["other"]  # runway was never claimed for it


def test_an_unclaimed_holder_keeps_its_slot_only_for_the_claim_grace(flight: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    store = JobStore(flight["table"])
    for job_id in ("cut-off", "next"):
        in_flight_job(store, job_id)
    assert inflight.acquire(flight["table"], "runway", "cut-off", 1) == 0  # then cut off before its claim
    assert inflight.acquire(flight["table"], "runway", "next", 1) is None
    later = inflight.clock() + inflight.CLAIM_GRACE_SECONDS + 1
    monkeypatch.setattr(inflight, "clock", lambda: later)
    assert inflight.acquire(flight["table"], "runway", "next", 1) == 0
    assert holders(flight["table"], "runway", 1) == ["next"]
