"""A job waiting for its provider slot whose message back never comes (lost, or dead-lettered
after repeated errors) is not left waiting until its deadline: the reconciler takes it up.
Against moto server (real HTTP) and the provider simulator (real HTTP)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest

from aleph_pipeline.intake import handle_object_created
from aleph_pipeline.jobs import JobState, JobStore
from aleph_pipeline.keys import job_id_for
from aleph_pipeline.reconcile import reconcile
from aleph_pipeline.storage import head
from local.simulator.server import SimulatorServer

from .conftest import clear_caches
from .test_reconcile import indexed  # noqa: F401  (the fixture: the table with its status index)

pytestmark = pytest.mark.timeout(90)

MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 2000  # an MP4's first box


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with SimulatorServer("127.0.0.1", 0) as running:
        yield running.url


@pytest.fixture
def waiting(indexed: dict[str, Any], sim_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:  # noqa: F811
    """Two kie jobs at one task per 5 s: the second waits for its slot, its message on a queue."""
    endpoint = indexed["s3"].meta.endpoint_url
    sqs = boto3.client("sqs", endpoint_url=endpoint)
    queue_url = sqs.create_queue(QueueName=f"pace-{indexed['table_name']}")["QueueUrl"]
    boto3.client("secretsmanager", endpoint_url=endpoint).put_secret_value(SecretId=indexed["secret"], SecretString=json.dumps({"kie": "sim-kie-key"}))
    monkeypatch.setenv("PROVIDER_ENDPOINTS", json.dumps({"kie": f"{sim_url}/kie"}))
    monkeypatch.setenv("CALLBACK_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("PROVIDER_RATE_LIMITS", json.dumps({"kie": "1/5"}))
    monkeypatch.setenv("PACE_QUEUE_URL", queue_url)
    clear_caches()
    httpx.post(f"{sim_url}/_sim/reset").raise_for_status()
    jobs = []
    for name in ("one", "two"):
        stem = f"incoming/lost/{name}"
        indexed["s3"].put_object(Bucket=indexed["input"], Key=f"{stem}.mp4", Body=MP4)
        indexed["s3"].put_object(Bucket=indexed["input"], Key=f"{stem}.json", Body=json.dumps({"prompt": "snow", "provider": "kie"}).encode())
        info = head(indexed["input"], f"{stem}.json")
        assert info is not None
        jobs.append(job_id_for(indexed["input"], f"{stem}.json", info.version_marker))
        handle_object_created(indexed["input"], f"{stem}.json")
    second = JobStore().get(jobs[1])
    assert second is not None and second.state == JobState.RECEIVED and "paceSlot" in second.item
    sqs.purge_queue(QueueUrl=queue_url)  # the message that would bring it back is lost
    return {**indexed, "sim": sim_url, "jobs": jobs, "sqs": sqs, "queue_url": queue_url}


def kie_tasks(sim: str) -> int:
    return sum(1 for task in httpx.get(f"{sim}/_sim/tasks").json() if task["provider"] == "kie")


def test_a_waiting_job_whose_message_was_lost_is_submitted_by_the_reconciler_once_its_slot_is_long_past(waiting: dict[str, Any]) -> None:
    second = waiting["jobs"][1]
    slot = float(JobStore().get(second).item["paceSlot"]["at"])  # type: ignore[union-attr]
    reconcile(time.time())  # its slot is not long past yet: left to its message
    assert JobStore().get(second).state == JobState.RECEIVED  # type: ignore[union-attr]
    assert kie_tasks(waiting["sim"]) == 1

    # Long past its slot and no message came: the reconciler looks again and sends it (once).
    while time.time() < slot:  # the gate opens at the slot (at most 5 s and the margin away)
        time.sleep(0.2)
    reconcile(time.time() + 3600)
    found = JobStore().get(second)
    assert found is not None and found.state == JobState.SUBMITTED
    assert kie_tasks(waiting["sim"]) == 2


def test_a_dead_lettered_message_of_a_waiting_job_takes_the_job_up(waiting: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    second = waiting["jobs"][1]
    dead = waiting["sqs"].create_queue(QueueName=f"dead-{waiting['table_name']}")["QueueUrl"]
    waiting["sqs"].send_message(QueueUrl=dead, MessageBody=json.dumps({"retryJob": second}))
    monkeypatch.setenv("SUBMIT_DEAD_LETTER_QUEUE_URL", dead)
    clear_caches()
    slot = float(JobStore().get(second).item["paceSlot"]["at"])  # type: ignore[union-attr]
    while time.time() < slot:
        time.sleep(0.2)
    report = reconcile(time.time())
    assert report.redriven == 1
    found = JobStore().get(second)
    assert found is not None and found.state == JobState.SUBMITTED
    assert kie_tasks(waiting["sim"]) == 2
