"""The Runway adapter against the simulator's Runway API, over real HTTP on 127.0.0.1.

The input clip sits in moto's S3 and reaches the adapter as a presigned GET URL, as in the
pipeline; the adapter streams it into the simulator's upload target. Waits poll a condition
with a deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aleph_pipeline.finalize import finalize_job
from aleph_pipeline.jobs import JobStore
from aleph_pipeline.providers.base import Outcome, ProviderError, SubmitRequest
from aleph_pipeline.providers.runway import API_VERSION, RunwayProtocol
from aleph_pipeline.sidecar import parse_sidecar
from local.media import duration_seconds, ffmpeg, make_clip
from local.simulator.server import SimulatorServer

from .conftest import clear_caches

pytestmark = pytest.mark.timeout(90)

KEY = "sim-runway-key"
JOB_ID = "0123456789abcdef0123456789abcdef"


def wait_until(probe: Callable[[], Any], what: str, timeout: float = 45) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return value


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runway-media")
    make_clip(folder / "clip.mp4", seconds=7, size="320x240")
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=64x64", "-frames:v", "1", str(folder / "frame.png"))
    return folder


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with SimulatorServer("127.0.0.1", 0) as running:
        yield running


@dataclass
class Runway:
    sim: str
    control: httpx.Client
    adapter: RunwayProtocol
    video_url: str
    frame_url: str
    s3: Any
    output_bucket: str

    def sim_post(self, path: str, body: Any) -> Any:
        answer = self.control.post(f"{self.sim}{path}", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def sim_task(self, task_id: str) -> dict[str, Any]:
        document: dict[str, Any] = self.control.get(f"{self.sim}/_sim/tasks/{task_id}").json()
        return document

    def request(self, document: dict[str, Any] | None = None, frames: tuple[str, ...] = ()) -> SubmitRequest:
        sidecar, _ = parse_sidecar(json.dumps(document or {"prompt": "make it snow"}).encode())
        return SubmitRequest(JOB_ID, sidecar, "aleph2", self.video_url, (), "", frames)

    def poll_until(self, task_id: str, done: Callable[[Outcome], bool], what: str) -> Outcome:
        def probe() -> Outcome | None:
            outcome = self.adapter.poll(task_id)
            return outcome if done(outcome) else None

        found: Outcome = wait_until(probe, what)
        return found


@pytest.fixture
def runway(server: SimulatorServer, media: Path, aws: dict[str, Any]) -> Iterator[Runway]:
    s3 = aws["s3"]
    for name in ("clip.mp4", "frame.png"):
        s3.upload_file(str(media / name), aws["input"], f"incoming/shot/{name}")
    video_url, frame_url = (
        s3.generate_presigned_url("get_object", Params={"Bucket": aws["input"], "Key": f"incoming/shot/{name}"}, ExpiresIn=600)
        for name in ("clip.mp4", "frame.png")
    )
    with httpx.Client(timeout=30, trust_env=False) as control, httpx.Client(timeout=30, trust_env=False) as http:
        adapter = RunwayProtocol(
            id="runway", base_url=f"{server.url}/runway", api_key=lambda: KEY, http=http, models=("aleph2",), default_result_hosts=("127.0.0.1",)
        )
        handle = Runway(server.url, control, adapter, video_url, frame_url, s3, aws["output"])
        handle.sim_post("/_sim/reset", None)
        handle.sim_post("/runway/_sim/config", {"concurrency": 2})
        yield handle
        handle.sim_post("/_sim/config", {"hold": False})
        handle.sim_post("/_sim/reset", None)


def test_a_submitted_edit_is_uploaded_runs_and_succeeds_with_an_edited_video(runway: Runway, tmp_path: Path) -> None:
    document = {"prompt": "make it snow", "seed": 7, "aspectRatio": "1:1", "frameImages": [{"image": "frame.png", "timestamp": 2}]}
    task_id = runway.adapter.submit(runway.request(document, (runway.frame_url,)))
    outcome = runway.poll_until(task_id, lambda o: o.state != "running", "the task to end")
    assert outcome.state == "succeeded", outcome.error
    sent = runway.sim_task(task_id)
    body = sent["request"]
    assert body["videoUri"].startswith("runway://uploads/") and body["keyframes"][0]["uri"].startswith("runway://uploads/")
    assert (body["model"], body["seed"], body["ratio"], body["keyframes"][0]["seconds"]) == ("aleph2", 7, "960:960", 2)
    assert {k.lower(): v for k, v in sent["headers"].items()}["x-runway-version"] == API_VERSION
    assert sent["callback_status"] == "none"  # Runway never calls back
    result = tmp_path / "result.mp4"
    with httpx.Client(trust_env=False) as client:
        answer = client.get(outcome.video_urls[0])
    assert answer.status_code == 200
    result.write_bytes(answer.content)
    assert duration_seconds(result) == pytest.approx(5, abs=0.5)  # the simulator's edit, from the uploaded clip


def test_a_task_over_the_accounts_concurrency_is_throttled_then_runs(runway: Runway) -> None:
    runway.sim_post("/runway/_sim/config", {"concurrency": 1})
    runway.sim_post("/_sim/config", {"hold": True})
    first = runway.adapter.submit(runway.request())
    runway.poll_until(first, lambda o: o.state == "running" and not o.throttled and runway.sim_task(first)["state"] == "running", "the first task to run")
    second = runway.adapter.submit(runway.request())
    throttled = runway.poll_until(second, lambda o: o.throttled, "the second task to be throttled")
    assert throttled.state == "running"
    runway.sim_post("/_sim/config", {"hold": False})
    for task_id in (first, second):
        assert runway.poll_until(task_id, lambda o: o.state != "running", "the tasks to end").state == "succeeded"


def test_a_cancelled_task_is_a_terminal_failure(runway: Runway) -> None:
    runway.sim_post("/_sim/config", {"hold": True})
    task_id = runway.adapter.submit(runway.request())
    runway.poll_until(task_id, lambda o: runway.sim_task(task_id)["state"] == "running", "the task to run")
    cancelled = runway.control.delete(f"{runway.sim}/runway/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {KEY}", "X-Runway-Version": API_VERSION})
    assert cancelled.status_code == 204
    outcome = runway.adapter.poll(task_id)
    assert outcome.state == "failed" and outcome.error is not None
    assert (outcome.error.details, outcome.error.retryable) == ({"providerCode": "CANCELLED"}, False)
    runway.sim_post("/_sim/config", {"hold": False})
    wait_until(lambda: runway.sim_task(task_id)["state"] == "cancelled", "the worker to drop the cancelled edit")
    assert runway.adapter.poll(task_id).state == "failed"  # stays cancelled: no result appears later


def test_a_failure_code_reaches_the_job_error(runway: Runway) -> None:
    runway.sim_post("/_sim/faults", [{"fault": "generation_failure", "msg": "INTERNAL.BAD_OUTPUT.CODE01", "provider": "runway"}])
    task_id = runway.adapter.submit(runway.request())
    outcome = runway.poll_until(task_id, lambda o: o.state != "running", "the task to fail")
    assert outcome.state == "failed" and outcome.error is not None
    assert (outcome.error.details, outcome.error.retryable) == ({"providerCode": "INTERNAL.BAD_OUTPUT.CODE01"}, True)


def test_submit_faults_are_classified(runway: Runway) -> None:
    runway.sim_post("/_sim/faults", [{"fault": "submit_429", "count": 1}, {"fault": "submit_500", "count": 1}])
    with pytest.raises(ProviderError) as limited:
        runway.adapter.submit(runway.request())
    assert (limited.value.kind, limited.value.status) == ("retryable", 429)
    with pytest.raises(ProviderError) as failed:
        runway.adapter.submit(runway.request())
    assert (failed.value.kind, failed.value.status) == ("ambiguous", 500)


def test_a_wrong_key_is_refused_without_the_key_in_the_error(runway: Runway) -> None:
    runway.adapter.api_key = lambda: "wrong-key"
    with pytest.raises(ProviderError) as error:
        runway.adapter.submit(runway.request())
    assert (error.value.kind, error.value.status) == ("refused", 401)
    assert "wrong-key" not in str(error.value)


def test_the_simulator_refuses_undocumented_fields_and_a_missing_version(runway: Runway) -> None:
    uri = "https://example.test/v.mp4"
    headers = {"Authorization": f"Bearer {KEY}", "X-Runway-Version": API_VERSION}
    answer = runway.control.post(f"{runway.sim}/runway/v1/video_to_video", json={"model": "aleph2", "videoUri": uri, "promptTxt": "x"}, headers=headers)
    assert answer.status_code == 400
    document = answer.json()
    assert document["error"] == "Validation of body failed"
    assert any("promptTxt" in issue["message"] and "promptText" in issue["message"] for issue in document["issues"])
    unversioned = runway.control.post(
        f"{runway.sim}/runway/v1/video_to_video", json={"model": "aleph2", "videoUri": uri}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert unversioned.status_code == 400 and "X-Runway-Version" in unversioned.json()["error"]
    unknown_upload = runway.control.post(
        f"{runway.sim}/runway/v1/video_to_video", json={"model": "aleph2", "videoUri": "runway://uploads/nope"}, headers=headers
    )
    assert unknown_upload.status_code == 400 and "names no uploaded file" in unknown_upload.text


def test_an_expired_output_link_is_refreshed_by_polling_again(runway: Runway) -> None:
    runway.sim_post("/_sim/faults", [{"fault": "expired_result", "provider": "runway"}])
    task_id = runway.adapter.submit(runway.request())
    first = runway.poll_until(task_id, lambda o: o.state != "running", "the task to end")
    assert first.state == "succeeded"
    fresh = runway.adapter.poll(task_id)
    with httpx.Client(trust_env=False) as client:
        assert client.get(first.video_urls[0]).status_code == 403  # past its expiry
        assert fresh.video_urls != first.video_urls
        assert client.get(fresh.video_urls[0]).status_code == 200


@pytest.mark.parametrize("confirm", ["true", "false"])
def test_finalize_copies_a_fresh_link_of_the_task(runway: Runway, aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch, confirm: str) -> None:
    """A job that saw SUCCEEDED with a link that has since expired completes all the same: finalize
    polls the task again, before copying (ConfirmResultsByPolling) or when the copy finds the link
    expired (without it), and copies the fresh link."""
    monkeypatch.setenv("CONFIRM_RESULTS_BY_POLLING", confirm)
    runway.sim_post("/_sim/faults", [{"fault": "expired_result", "provider": "runway"}])
    runway.sim_post("/_sim/config", {"keys": {"runway": "key-runway"}})  # the key in the stack's secret
    runway.adapter.api_key = lambda: "key-runway"
    task_id = runway.adapter.submit(runway.request())
    seen = runway.poll_until(task_id, lambda o: o.state != "running", "the task to end")
    monkeypatch.setenv("PROVIDER_ENDPOINTS", json.dumps({"runway": f"{runway.sim}/runway"}))
    monkeypatch.setenv("RESULT_HOSTS", json.dumps({"runway": ["127.0.0.1"]}))
    monkeypatch.setenv("ALLOW_HTTP_RESULT_URLS", "true")
    clear_caches()
    aws["table"].put_item(
        Item={
            "jobId": JOB_ID,
            "status": "SUCCEEDED",
            "provider": "runway",
            "providerTaskId": task_id,
            "outputPrefix": f"shot/{JOB_ID}/",
            "sidecarJson": json.dumps({"prompt": "make it snow"}),
            "result": {"videos": list(seen.video_urls)},  # the link that expired meanwhile
            "history": [],
            "createdAt": "t0",
            "updatedAt": "t1",
        }
    )
    finalize_job(JOB_ID)
    job = JobStore().get(JOB_ID)
    assert job is not None and job.state.value == "COMPLETED", job
    copied = aws["s3"].get_object(Bucket=aws["output"], Key=f"shot/{JOB_ID}/result.mp4")["Body"].read()
    assert copied[4:8] == b"ftyp"


def test_an_upload_over_the_api_body_limit_is_taken(runway: Runway) -> None:
    """Runway takes uploads up to 200 MB: the upload target is not held to the 2 MB API-body limit."""
    headers = {"Authorization": f"Bearer {KEY}", "X-Runway-Version": API_VERSION}
    ticket = runway.control.post(f"{runway.sim}/runway/v1/uploads", json={"filename": "big.mp4", "type": "ephemeral"}, headers=headers)
    assert ticket.status_code == 200, ticket.text
    document = ticket.json()
    data = b"\x00\x00\x00\x18ftypisom" + bytes(3 * 1024 * 1024)
    answer = runway.control.post(document["uploadUrl"], data=document["fields"], files={"file": ("big.mp4", data, "video/mp4")})
    assert answer.status_code == 204, answer.text
    assert document["runwayUri"].startswith("runway://")
