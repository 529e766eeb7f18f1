"""Pacing each provider (``aleph_pipeline.pacing``) against moto server (real HTTP) and the provider
simulator over HTTP, which enforces its own rate limit (``/_sim/limits``) and counts its 429s."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest

from aleph_pipeline import pacing
from aleph_pipeline.intake import handle_object_created, handle_retry
from aleph_pipeline.jobs import JobState, JobStore
from aleph_pipeline.keys import job_id_for
from aleph_pipeline.storage import head
from local.simulator.server import SimulatorServer

from .conftest import clear_caches

pytestmark = pytest.mark.timeout(90)

MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 2000  # an MP4's first box
KIE_KEY = "sim-kie-key"


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with SimulatorServer("127.0.0.1", 0) as running:
        yield running.url


@pytest.fixture
def paced(aws: dict[str, Any], sim_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    endpoint = aws["s3"].meta.endpoint_url
    queue_url = boto3.client("sqs", endpoint_url=endpoint).create_queue(QueueName=f"pace-{aws['table_name']}")["QueueUrl"]
    boto3.client("secretsmanager", endpoint_url=endpoint).put_secret_value(SecretId=aws["secret"], SecretString=json.dumps({"kie": KIE_KEY}))
    monkeypatch.setenv("PROVIDER_ENDPOINTS", json.dumps({"kie": f"{sim_url}/kie"}))
    monkeypatch.setenv("CALLBACK_API_URL", "http://127.0.0.1:9")  # a closed port: callbacks never leave the machine
    monkeypatch.setenv("PACE_QUEUE_URL", queue_url)
    clear_caches()
    httpx.post(f"{sim_url}/_sim/reset").raise_for_status()
    yield {**aws, "sim": sim_url, "queue_url": queue_url, "sqs": boto3.client("sqs", endpoint_url=endpoint)}
    httpx.post(f"{sim_url}/_sim/reset").raise_for_status()


def set_limits(monkeypatch: pytest.MonkeyPatch, limits: dict[str, str]) -> None:
    monkeypatch.setenv("PROVIDER_RATE_LIMITS", json.dumps(limits))
    clear_caches()


def upload_pair(aws: dict[str, Any], stem: str) -> str:
    aws["s3"].put_object(Bucket=aws["input"], Key=f"{stem}.mp4", Body=MP4)
    aws["s3"].put_object(Bucket=aws["input"], Key=f"{stem}.json", Body=json.dumps({"prompt": "snow", "provider": "kie"}).encode())
    info = head(aws["input"], f"{stem}.json")
    assert info is not None
    return job_id_for(aws["input"], f"{stem}.json", info.version_marker)


def job(job_id: str) -> Any:
    found = JobStore().get(job_id)
    assert found is not None
    return found


def sim_tasks(paced: dict[str, Any]) -> list[dict[str, Any]]:
    tasks = httpx.get(f"{paced['sim']}/_sim/tasks").json()
    return list(tasks if isinstance(tasks, list) else tasks.get("tasks", []))


def delayed(paced: dict[str, Any]) -> int:
    attributes = paced["sqs"].get_queue_attributes(QueueUrl=paced["queue_url"], AttributeNames=["ApproximateNumberOfMessagesDelayed"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessagesDelayed"])


def later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The domain's clock moved on (the slot's time has come) without waiting for it."""
    monkeypatch.setattr(pacing, "clock", lambda: time.time() + seconds)


def test_slots_taken_from_many_threads_are_distinct_and_keep_the_limit(paced: dict[str, Any]) -> None:
    limit = pacing.RateLimit(20, 10.0)
    now = time.time()
    slots: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(6):
            slot = pacing.Pacer(JobStore().table).take_slot("kie", limit, now)
            with lock:
                slots.append(slot)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(slots) == 48
    slots.sort()
    assert slots[0] == round(now, 3)  # an idle provider: the first goes at once
    # then one every 0.5 s and half the gate's margin, none twice
    assert [round(b - a, 3) for a, b in itertools.pairwise(slots)] == [round(limit.spacing, 3)] * 47
    for index in range(len(slots) - 20):  # never more than 20 in any 10 s
        assert slots[index + 20] - slots[index] >= 10.0 - 1e-6


def test_the_gate_lets_no_more_than_the_limit_through_in_any_window_from_many_threads(paced: dict[str, Any]) -> None:
    limit = pacing.RateLimit(5, 0.5)  # 5 per 0.5 s; the gate's window is 0.5 s and the margin
    window = limit.window * pacing.SEND_MARGIN
    sent: list[float] = []
    lock = threading.Lock()

    def send() -> None:
        pacer = pacing.Pacer(JobStore().table)
        for _ in range(3):
            assert pacer.open_gate("kie", limit, give_up_at=time.time() + 30)
            with lock:
                sent.append(time.time())

    started = time.time()
    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    sent.sort()
    assert len(sent) == 24
    # No 6 sends within one window: a sliding window of 5 (the times here are taken just after
    # each send was let through, so they carry a little jitter)...
    assert min(b - a for a, b in zip(sent, sent[5:], strict=False)) >= window - 0.1
    # ...and no room left unused: an idle provider's window takes 5 at once (room left by a late
    # sender is used, not lost), and 24 sends need 4 full windows after the first 5.
    assert sent[4] - sent[0] < window / 2
    assert sent[-1] - started < 4 * window + 2.0
    recorded = JobStore().table.get_item(Key={"jobId": pacing.pace_key("kie")}, ConsistentRead=True)["Item"]
    assert len(recorded["sends"]) == 5 and int(recorded["sendsVersion"]) == 24


def test_a_gate_that_stays_shut_past_the_bound_lets_nothing_through(paced: dict[str, Any]) -> None:
    limit = pacing.RateLimit(1, 60.0)
    pacer = pacing.Pacer(JobStore().table)
    assert pacer.open_gate("kie", limit, give_up_at=time.time() + 1)
    before = time.time()
    assert not pacer.open_gate("kie", limit, give_up_at=time.time() + 1)  # the window reopens in 63 s: not waited for
    assert time.time() - before < 1.0
    recorded = JobStore().table.get_item(Key={"jobId": pacing.pace_key("kie")}, ConsistentRead=True)["Item"]
    assert int(recorded["sendsVersion"]) == 1


def test_a_job_over_the_limit_waits_in_received_and_is_submitted_at_its_slot(paced: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    set_limits(monkeypatch, {"kie": "1/60"})
    first, second = upload_pair(paced, "incoming/a/one"), upload_pair(paced, "incoming/a/two")
    handle_object_created(paced["input"], "incoming/a/one.json")
    handle_object_created(paced["input"], "incoming/a/two.json", receive_count=3)
    assert job(first).state == JobState.SUBMITTED
    waiting = job(second)
    assert waiting.state == JobState.RECEIVED and not waiting.submission_claimed
    assert waiting.waiting_for.startswith("waiting for a provider slot")
    assert "pairingDeadline" not in waiting.item and "deadlineAt" in waiting.item  # failed only at its own deadline
    assert len(sim_tasks(paced)) == 1
    # The retry is a delayed message of its own on the submit queue, not yet visible.
    assert delayed(paced) == 1
    assert paced["sqs"].receive_message(QueueUrl=paced["queue_url"], WaitTimeSeconds=0).get("Messages") is None
    # The same event delivered again keeps the slot it holds (a redelivered message is re-queued for it).
    handle_object_created(paced["input"], "incoming/a/two.json", receive_count=4)
    assert job(second).item["paceSlot"] == waiting.item["paceSlot"]
    assert delayed(paced) == 2
    later(monkeypatch, 60 * pacing.SEND_MARGIN + 1)  # its slot and the send gate (one interval and the margin)
    handle_retry(second)
    assert job(second).state == JobState.SUBMITTED
    assert len(sim_tasks(paced)) == 2
    handle_retry(second)  # a duplicate of the retry message: the claim keeps it to one task
    assert len(sim_tasks(paced)) == 2


def test_a_job_that_fails_a_check_takes_no_slot(paced: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    set_limits(monkeypatch, {"kie": "1/60"})
    paced["s3"].put_object(Bucket=paced["input"], Key="incoming/b/bad.mp4", Body=b"this is not a video\n" * 100)
    paced["s3"].put_object(Bucket=paced["input"], Key="incoming/b/bad.json", Body=json.dumps({"prompt": "snow", "provider": "kie"}).encode())
    handle_object_created(paced["input"], "incoming/b/bad.json")
    good = upload_pair(paced, "incoming/b/good")
    handle_object_created(paced["input"], "incoming/b/good.json")
    assert job(good).state == JobState.SUBMITTED  # the one slot of the minute was still free


def test_a_429_slows_the_provider_down_and_fails_no_job(paced: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    set_limits(monkeypatch, {"kie": "none"})  # our pace does not know the account's other client
    httpx.post(f"{paced['sim']}/_sim/limits", json={"kie": "1/60"}).raise_for_status()
    first, second, third = (upload_pair(paced, f"incoming/c/{name}") for name in ("one", "two", "three"))
    handle_object_created(paced["input"], "incoming/c/one.json")
    # On the event's last attempt: a retryable refusal there used to fail the job.
    handle_object_created(paced["input"], "incoming/c/two.json", receive_count=4)
    assert job(first).state == JobState.SUBMITTED
    refused = job(second)
    assert refused.state == JobState.RECEIVED and not refused.submission_claimed
    assert refused.waiting_for.startswith("waiting for a provider slot")
    stats = httpx.get(f"{paced['sim']}/_sim/limits").json()
    assert stats["kie"] == {"limit": "1/60", "accepted": 1, "refused": 1}
    # The provider is slowed for every job, not only the refused one: the next waits without a request.
    handle_object_created(paced["input"], "incoming/c/three.json")
    assert job(third).waiting_for.startswith("waiting for a provider slot")
    assert httpx.get(f"{paced['sim']}/_sim/limits").json()["kie"]["refused"] == 1
    httpx.post(f"{paced['sim']}/_sim/limits", json={"kie": "none"}).raise_for_status()
    later(monkeypatch, pacing.DEFAULT_BACKOFF_SECONDS * 2 + 1)
    handle_retry(second)
    handle_retry(third)
    assert job(second).state == job(third).state == JobState.SUBMITTED
    assert len(sim_tasks(paced)) == 3


def test_a_429_met_while_our_own_sends_fill_the_window_keeps_the_job_s_place_and_pushes_nothing_out(
    paced: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_limits(monkeypatch, {"kie": "1/2"})  # our pace: one per 2 s (2.1 s with the margin)
    httpx.post(f"{paced['sim']}/_sim/limits", json={"kie": "1/60"}).raise_for_status()  # the provider's clock is stricter
    first, second = upload_pair(paced, "incoming/own/one"), upload_pair(paced, "incoming/own/two")
    handle_object_created(paced["input"], "incoming/own/one.json")
    later(monkeypatch, 2.5)  # past our own gate's window: the second goes, and the provider says 429
    handle_object_created(paced["input"], "incoming/own/two.json")
    assert job(first).state == JobState.SUBMITTED
    refused = job(second)
    assert refused.state == JobState.RECEIVED and not refused.submission_claimed
    assert refused.waiting_for.startswith("waiting for a provider slot")
    assert httpx.get(f"{paced['sim']}/_sim/limits").json()["kie"]["refused"] == 1
    item = JobStore().table.get_item(Key={"jobId": pacing.pace_key("kie")}, ConsistentRead=True)["Item"]
    assert "pausedUntil" not in item  # no push-out: our own sends explain it
    # and the refused send is out of the gate's record (the provider did not count it)
    assert float(refused.item["paceSentAt"]) not in [float(at) for at in item["sends"]]
    # Its place is kept: back at the gate one interval later, not behind the slots handed out since.
    assert float(refused.item["paceSlot"]["at"]) <= time.time() + 2.5 + 2.0 + 0.5
    assert float(item["nextFreeAt"]) <= time.time() + 2.5 + 2.1 + 0.5
    visible = paced["sqs"].get_queue_attributes(QueueUrl=paced["queue_url"], AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert delayed(paced) + int(visible["ApproximateNumberOfMessages"]) == 1  # one message brings it back


def test_a_job_whose_slot_came_while_the_window_is_full_keeps_its_place(paced: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    set_limits(monkeypatch, {"kie": "2/10"})  # slots 5.075 s apart; 2 sends in any 10.3 s
    jobs = [upload_pair(paced, f"incoming/late/{name}") for name in ("one", "two", "three")]
    start = time.time()
    handle_object_created(paced["input"], "incoming/late/one.json")  # its slot is now: sent
    handle_object_created(paced["input"], "incoming/late/two.json")  # slot at +5.075: waits
    handle_object_created(paced["input"], "incoming/late/three.json")  # slot at +10.5: waits
    table = JobStore().table
    next_free = float(table.get_item(Key={"jobId": pacing.pace_key("kie")}, ConsistentRead=True)["Item"]["nextFreeAt"])
    # A job made late by a stall went through the gate just before the second's slot: the window is full.
    later(monkeypatch, 5.4)
    item = table.get_item(Key={"jobId": pacing.pace_key("kie")}, ConsistentRead=True)["Item"]
    table.update_item(
        Key={"jobId": pacing.pace_key("kie")},
        UpdateExpression="SET sends = list_append(sends, :late), sendsVersion = sendsVersion + :one",
        ExpressionAttributeValues={":late": [item["sends"][-1] + 5], ":one": 1},
    )
    handle_retry(jobs[1])
    waiting = job(jobs[1])
    assert waiting.state == JobState.RECEIVED
    # Back at the gate an interval on (when the window has room), not behind the third's slot.
    assert float(waiting.item["paceSlot"]["at"]) < start + 5.4 + 5.0 + 1.0 < next_free
    assert float(table.get_item(Key={"jobId": pacing.pace_key("kie")}, ConsistentRead=True)["Item"]["nextFreeAt"]) == next_free


def test_the_simulator_answers_kie_s_own_429_over_its_limit(sim_url: str) -> None:
    httpx.post(f"{sim_url}/_sim/reset").raise_for_status()
    assert httpx.post(f"{sim_url}/_sim/limits", json={"kie": "2 per second"}).status_code == 400
    httpx.post(f"{sim_url}/_sim/limits", json={"kie": "2/60"}).raise_for_status()
    submit = {"prompt": "snow", "videoUrl": "http://127.0.0.1:9/v.mp4"}
    answers = [httpx.post(f"{sim_url}/kie/api/v1/aleph/generate", json=submit, headers={"Authorization": f"Bearer {KIE_KEY}"}) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert answers[2].json()["code"] == 429
    assert httpx.get(f"{sim_url}/_sim/limits").json() == {"kie": {"limit": "2/60", "accepted": 2, "refused": 1}}
    httpx.post(f"{sim_url}/_sim/reset").raise_for_status()
    assert httpx.get(f"{sim_url}/_sim/limits").json() == {}
