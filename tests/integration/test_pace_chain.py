"""A provider whose next slot is further out than ``PaceMaxWaitSeconds`` hands a chained job to the
next provider of its chain, against moto server and the provider simulator (real HTTP both): what
the simulator created is the truth for "one task in all"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx
import pytest

from aleph_pipeline import pacing
from aleph_pipeline.intake import handle_object_created
from aleph_pipeline.jobs import Job, JobState, JobStore
from aleph_pipeline.keys import job_id_for
from aleph_pipeline.providers import PROVIDER_IDS
from aleph_pipeline.storage import head
from local.simulator.config import ProviderKey
from local.simulator.server import SimulatorServer

from .conftest import clear_caches

pytestmark = pytest.mark.timeout(90)

MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 2000  # an MP4's first box
CHAIN = ["kie", "apikley"]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    keys = {provider: ProviderKey(api_key=f"key-{provider}") for provider in PROVIDER_IDS}  # the aws fixture's secret
    with SimulatorServer("127.0.0.1", 0, keys=keys) as running:
        yield running.url


@pytest.fixture
def stack(aws: dict[str, Any], sim_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    endpoint = aws["s3"].meta.endpoint_url
    queue_url = boto3.client("sqs", endpoint_url=endpoint).create_queue(QueueName=f"submit-{aws['table_name']}")["QueueUrl"]
    monkeypatch.setenv("PROVIDER_ENDPOINTS", json.dumps({provider: f"{sim_url}/{provider}" for provider in PROVIDER_IDS}))
    monkeypatch.setenv("CALLBACK_API_URL", "http://127.0.0.1:9")  # a closed port: callbacks never leave the machine
    monkeypatch.setenv("PACE_QUEUE_URL", queue_url)
    # One kie task per 10 minutes: the second job's slot is 609 s out (half the gate's margin), past the bound of 60 s.
    monkeypatch.setenv("PROVIDER_RATE_LIMITS", json.dumps({"kie": "1/600", "apikley": "1/600"}))
    monkeypatch.setenv("PACE_MAX_WAIT_SECONDS", "60")
    clear_caches()
    httpx.post(f"{sim_url}/_sim/reset").raise_for_status()
    yield {**aws, "sim": sim_url}
    httpx.post(f"{sim_url}/_sim/reset").raise_for_status()


def drop(stack: dict[str, Any], name: str, sidecar: dict[str, Any]) -> str:
    """Upload the video, then the sidecar, and run intake for the sidecar's event; the job id."""
    key = f"incoming/{name}.json"
    stack["s3"].put_object(Bucket=stack["input"], Key=f"incoming/{name}.mp4", Body=MP4)
    stack["s3"].put_object(Bucket=stack["input"], Key=key, Body=json.dumps({"prompt": "make it snow", **sidecar}).encode())
    handle_object_created(stack["input"], key)
    info = head(stack["input"], key)
    assert info is not None
    return job_id_for(stack["input"], key, info.version_marker)


def job(job_id: str) -> Job:
    found = JobStore().get(job_id)
    assert found is not None
    return found


def tasks_by_job(stack: dict[str, Any]) -> dict[str, list[str]]:
    """The providers the simulator made a task at, per job (the job id ends the callback URL's path)."""
    listed = httpx.get(f"{stack['sim']}/_sim/tasks").json()
    found: dict[str, list[str]] = {}
    for task in listed if isinstance(listed, list) else listed["tasks"]:
        job_id = urlsplit(str(task["request"].get("callBackUrl", ""))).path.rsplit("/", 1)[-1]  # kie's and apikley's field
        found.setdefault(job_id, []).append(task["provider"])
    return found


def next_free_at(provider: str) -> float:
    item = JobStore().table.get_item(Key={"jobId": pacing.pace_key(provider)}, ConsistentRead=True)["Item"]
    return float(item["nextFreeAt"])


def test_a_chained_job_with_no_kie_slot_within_the_bound_is_sent_once_to_apikley(stack: dict[str, Any]) -> None:
    first = drop(stack, "first", {"providers": CHAIN})
    assert job(first).state == JobState.SUBMITTED and job(first).provider == "kie"
    kie_next = next_free_at("kie")

    moved = drop(stack, "moved", {"providers": CHAIN})

    record = job(moved)
    assert record.state == JobState.SUBMITTED
    assert record.provider == "apikley"
    [tried] = record.providers_tried
    assert tried["provider"] == "kie"
    assert tried["reason"].startswith("no slot at kie for ") and tried["reason"].endswith(" s")
    assert 549 <= int(tried["reason"].split()[5]) <= 609
    assert "paceSlot" not in record.item
    assert next_free_at("kie") == kie_next  # the slot it did not use was never taken
    assert tasks_by_job(stack) == {first: ["kie"], moved: ["apikley"]}
    # The same event again: the job is claimed already, nothing more is sent anywhere.
    handle_object_created(stack["input"], "incoming/moved.json", receive_count=2)
    assert tasks_by_job(stack) == {first: ["kie"], moved: ["apikley"]}


def test_a_job_without_a_chain_waits_for_its_kie_slot(stack: dict[str, Any]) -> None:
    first = drop(stack, "solo-first", {"provider": "kie"})
    waiting = drop(stack, "solo-waits", {"provider": "kie"})

    record = job(waiting)
    assert record.state == JobState.RECEIVED and not record.submission_claimed
    assert record.waiting_for is not None and record.waiting_for.startswith("waiting for a provider slot")
    assert record.providers_tried == []
    assert record.item["paceSlot"]["provider"] == "kie"
    assert tasks_by_job(stack) == {first: ["kie"]}


def test_at_the_last_provider_of_its_chain_a_job_waits_for_the_slot_there(stack: dict[str, Any]) -> None:
    drop(stack, "kie-takes", {"providers": CHAIN})  # kie's slot for 10 minutes
    drop(stack, "apikley-takes", {"providers": CHAIN})  # moved on: apikley's slot for 10 minutes
    last = drop(stack, "last", {"providers": CHAIN})

    record = job(last)
    assert record.state == JobState.RECEIVED and not record.submission_claimed
    assert [entry["provider"] for entry in record.providers_tried] == ["kie"]
    assert record.item["paceSlot"]["provider"] == "apikley"  # waits there: nobody after apikley
    assert len([p for providers in tasks_by_job(stack).values() for p in providers]) == 2


def test_a_job_whose_later_providers_cannot_honour_it_waits_for_kie(stack: dict[str, Any]) -> None:
    drop(stack, "kie-busy", {"provider": "kie"})
    waiting = drop(stack, "marked", {"providers": ["kie", "crun"], "watermark": "team"})  # crun takes no watermark

    record = job(waiting)
    assert record.state == JobState.RECEIVED and not record.submission_claimed
    assert record.providers_tried == []
    assert record.item["paceSlot"]["provider"] == "kie"
    assert len(tasks_by_job(stack)) == 1
