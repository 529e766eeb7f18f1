"""The Replicate adapter against the simulator's Replicate API, and its webhooks through the real
callback path against moto server: submit, the signed webhook verified, replays and bad
signatures changing nothing, the poll as the fallback, failures.

Real HTTP on 127.0.0.1 throughout. Waits poll a condition with a deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from aleph_pipeline.callbacks import receive_callback
from aleph_pipeline.jobs import hash_token
from aleph_pipeline.providers import get_provider
from aleph_pipeline.providers.base import SubmitRequest
from aleph_pipeline.providers.replicate import ReplicateProtocol
from aleph_pipeline.sidecar import parse_sidecar
from local.media import duration_seconds, make_clip
from local.simulator.faults import KNOWN_FAULTS
from local.simulator.replicate import new_secret, webhook_headers
from local.simulator.server import SimulatorServer

from .conftest import clear_caches
from .sim_servers import CallbackSink, QuietFiles, serve, sink_handler

pytestmark = pytest.mark.timeout(90)

MODEL = "runwayml/gen4-aleph"
JOB_ID = "7" * 32
TOKEN = "a-per-job-token-of-the-usual-length-0123456789"


def wait_until(probe: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return value


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("replicate-media")
    make_clip(folder / "input.mp4", seconds=7, size="320x240")
    yield from serve(ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietFiles, directory=str(folder))))


@pytest.fixture(scope="module")
def sink() -> Iterator[CallbackSink]:
    found = CallbackSink()
    for url in serve(ThreadingHTTPServer(("127.0.0.1", 0), sink_handler(found))):
        found.url = url
        yield found


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with SimulatorServer("127.0.0.1", 0) as running:
        yield running


@pytest.fixture
def sim(server: SimulatorServer, sink: CallbackSink) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as client:
        client.post("/_sim/reset").raise_for_status()
        # The key the aws fixture puts in the provider secret for `replicate`.
        client.post("/_sim/config", json={"keys": {"replicate": "key-replicate"}}).raise_for_status()
        sink.clear()
        yield client
        client.post("/_sim/reset")


@pytest.fixture
def provider(aws: dict[str, Any], sim: httpx.Client, server: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> ReplicateProtocol:
    """The registered adapter, pointed at the simulator, with its results allowed over http on 127.0.0.1."""
    monkeypatch.setenv("PROVIDER_ENDPOINTS", json.dumps({"replicate": f"{server.url}/replicate"}))
    monkeypatch.setenv("RESULT_HOSTS", json.dumps({"replicate": ["127.0.0.1"]}))
    monkeypatch.setenv("ALLOW_HTTP_RESULT_URLS", "true")
    clear_caches()
    adapter = get_provider("replicate")
    assert isinstance(adapter, ReplicateProtocol)
    return adapter


@dataclass
class Rig:
    """Everything a test here works with: moto's resources, the adapter, the input, the webhook sink, the simulator."""

    aws: dict[str, Any]
    provider: ReplicateProtocol
    media: str
    sink: CallbackSink
    sim: httpx.Client


@pytest.fixture
def rig(aws: dict[str, Any], provider: ReplicateProtocol, media: str, sink: CallbackSink, sim: httpx.Client) -> Rig:
    return Rig(aws, provider, media, sink, sim)


def submit(provider: ReplicateProtocol, media: str, sink: CallbackSink, prompt: str = "make it snow") -> str:
    sidecar, _ = parse_sidecar(json.dumps({"prompt": prompt, "aspectRatio": "16:9", "seed": 7}).encode())
    callback = f"{sink.url}/callbacks/replicate/{JOB_ID}?token={TOKEN}"
    return provider.submit(SubmitRequest(JOB_ID, sidecar, MODEL, f"{media}/input.mp4", (), callback))


def waiting_job(aws: dict[str, Any], prediction_id: str) -> dict[str, Any]:
    item = {
        "jobId": JOB_ID,
        "status": "SUBMITTED",
        "provider": "replicate",
        "model": MODEL,
        "providerTaskId": prediction_id,
        "tokenHash": hash_token(TOKEN),
        "outputPrefix": f"shot/{JOB_ID}/",
        "history": [{"state": "RECEIVED", "at": "2026-01-01T00:00:00.000Z"}, {"state": "SUBMITTED", "at": "2026-01-01T00:00:01.000Z"}],
        "updatedAt": "2026-01-01T00:00:01.000Z",
    }
    aws["table"].put_item(Item=item)
    return item


def job(aws: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = aws["table"].get_item(Key={"jobId": JOB_ID}, ConsistentRead=True)["Item"]
    return item


def delivered(sink: CallbackSink, prediction_id: str, count: int = 1) -> list[tuple[bytes, dict[str, str]]]:
    """The webhooks as sent: the sink keeps the parsed body, and the simulator sends
    ``json.dumps(..., ensure_ascii=False)`` of it, so encoding it again gives the signed bytes."""
    return [(json.dumps(hook["body"], ensure_ascii=False).encode(), hook["headers"]) for hook in sink.wait_for(prediction_id, count)]


def test_the_signed_webhook_completes_the_job_and_a_replay_changes_nothing(rig: Rig, tmp_path: Path) -> None:
    aws, provider, media, sink, sim = rig.aws, rig.provider, rig.media, rig.sink, rig.sim
    prediction_id = submit(provider, media, sink)
    waiting_job(aws, prediction_id)
    [(body, headers)] = delivered(sink, prediction_id)
    assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= {name.lower() for name in headers}

    answer = receive_callback("replicate", JOB_ID, TOKEN, body, headers)
    assert (answer.status, answer.body) == (200, {"status": "accepted", "state": "SUCCEEDED"})
    done = job(aws)
    [result] = done["resultItems"].values()
    assert result["url"].startswith(f"{sim.base_url}/replicate/delivery/{prediction_id}/")

    replay = receive_callback("replicate", JOB_ID, TOKEN, body, headers)  # the same webhook-id again
    assert (replay.status, replay.body["status"]) == (200, "ignored")
    assert job(aws) == done

    # The poll agrees, and the result is the edit: at most the 5 s Replicate uses of a 7 s input.
    polled = provider.poll(prediction_id)
    assert (polled.state, polled.video_urls) == ("succeeded", (result["url"],))
    video = tmp_path / "result.mp4"
    video.write_bytes(sim.get(result["url"]).content)
    assert duration_seconds(video) <= 5.1
    [task] = [t for t in sim.get("/_sim/tasks").json() if t["taskId"] == prediction_id]
    assert task["request"]["webhook_events_filter"] == ["completed"]
    assert task["request"]["input"] == {"prompt": "make it snow", "video": f"{media}/input.mp4", "aspect_ratio": "16:9", "seed": 7}
    assert "key-replicate" not in json.dumps(task)


def test_a_bad_or_tampered_signature_is_401_and_changes_nothing(rig: Rig) -> None:
    aws, provider, media, sink = rig.aws, rig.provider, rig.media, rig.sink
    prediction_id = submit(provider, media, sink)
    before = waiting_job(aws, prediction_id)
    [(body, headers)] = delivered(sink, prediction_id)
    lowered = {name.lower(): value for name, value in headers.items()}
    wrong = webhook_headers(new_secret(), body, lowered["webhook-id"], int(lowered["webhook-timestamp"]))
    tampered = body.replace(prediction_id.encode(), b"x" * len(prediction_id), 1)
    stale = webhook_headers(new_secret(), body, lowered["webhook-id"], int(time.time()) - 600)
    for forged_body, forged_headers in ((body, wrong), (tampered, headers), (body, stale), (body, {})):
        answer = receive_callback("replicate", JOB_ID, TOKEN, forged_body, forged_headers)
        assert answer.status == 401, answer.body
        assert job(aws) == before
    assert receive_callback("replicate", JOB_ID, "not-the-token", body, headers).status == 401  # the token is checked first
    assert receive_callback("replicate", JOB_ID, TOKEN, body, headers).status == 200


def test_a_duplicate_delivery_is_harmless(rig: Rig) -> None:
    aws, provider, media, sink, sim = rig.aws, rig.provider, rig.media, rig.sink, rig.sim
    sim.post("/_sim/faults", json=[{"fault": "duplicate_callback"}]).raise_for_status()
    prediction_id = submit(provider, media, sink)
    waiting_job(aws, prediction_id)
    first, second = delivered(sink, prediction_id, count=2)
    assert first == second  # one delivery twice, same webhook-id
    answers = [receive_callback("replicate", JOB_ID, TOKEN, body, headers) for body, headers in (first, second)]
    assert [(answer.status, answer.body["status"]) for answer in answers] == [(200, "accepted"), (200, "ignored")]
    assert len(job(aws)["resultItems"]) == 1


@pytest.mark.skipif("bad_signature" not in KNOWN_FAULTS, reason="the bad_signature fault is not listed in local/simulator/faults.py TASK_FAULTS yet")
def test_the_bad_signature_fault_signs_with_another_secret(rig: Rig) -> None:
    aws, provider, media, sink, sim = rig.aws, rig.provider, rig.media, rig.sink, rig.sim
    sim.post("/_sim/faults", json=[{"fault": "bad_signature"}]).raise_for_status()
    prediction_id = submit(provider, media, sink)
    before = waiting_job(aws, prediction_id)
    [(body, headers)] = delivered(sink, prediction_id)
    assert receive_callback("replicate", JOB_ID, TOKEN, body, headers).status == 401
    assert job(aws) == before


def test_the_poll_completes_a_prediction_whose_webhook_never_came(rig: Rig) -> None:
    provider, media, sink, sim = rig.provider, rig.media, rig.sink, rig.sim
    sim.post("/_sim/faults", json=[{"fault": "drop_callback"}]).raise_for_status()
    sim.post("/_sim/config", json={"hold": True}).raise_for_status()
    prediction_id = submit(provider, media, sink)
    assert wait_until(lambda: provider.poll(prediction_id).state == "running", "processing")
    sim.post("/_sim/config", json={"hold": False}).raise_for_status()
    outcome = wait_until(lambda: (polled := provider.poll(prediction_id)).state == "succeeded" and polled, "succeeded")
    assert outcome.task_id == prediction_id and len(outcome.video_urls) == 1
    assert wait_until(lambda: sim.get(f"/_sim/tasks/{prediction_id}").json()["callback_status"] == "dropped", "the dropped webhook")
    assert sink.for_task(prediction_id) == []


def test_a_failed_prediction_fails_the_job_with_replicates_error(rig: Rig) -> None:
    aws, provider, media, sink, sim = rig.aws, rig.provider, rig.media, rig.sink, rig.sim
    sim.post("/_sim/faults", json=[{"fault": "generation_failure", "msg": "E005: the input was flagged as sensitive"}]).raise_for_status()
    prediction_id = submit(provider, media, sink)
    waiting_job(aws, prediction_id)
    [(body, headers)] = delivered(sink, prediction_id)
    assert json.loads(body)["status"] == "failed"
    answer = receive_callback("replicate", JOB_ID, TOKEN, body, headers)
    assert (answer.status, answer.body["state"]) == (200, "FAILED")
    failed = job(aws)
    assert "E005: the input was flagged as sensitive" in json.dumps(failed, default=str)
    polled = provider.poll(prediction_id)
    assert polled.state == "failed" and polled.error is not None and polled.error.message == "E005: the input was flagged as sensitive"


def test_undocumented_fields_are_refused_with_replicates_422(media: str, sim: httpx.Client) -> None:
    body = {"input": {"prompt": "x", "video": f"{media}/input.mp4", "duration": 10}, "webhook": "http://127.0.0.1:9/cb", "callBackUrl": "x"}
    answer = sim.post("/replicate/v1/models/runwayml/gen4-aleph/predictions", json=body, headers={"Authorization": "Bearer key-replicate"})
    assert answer.status_code == 422
    problem = answer.json()
    assert (problem["title"], problem["status"]) == ("Input validation failed", 422)
    assert {entry["field"] for entry in problem["invalid_fields"]} == {"(root)", "input"}
    assert "input.duration" in problem["detail"]
    unauthorized = sim.post("/replicate/v1/models/runwayml/gen4-aleph/predictions", json=body, headers={"Authorization": "Bearer wrong"})
    assert unauthorized.status_code == 401
    assert sim.get("/_sim/tasks").json() == []
