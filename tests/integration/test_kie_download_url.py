"""A kie job whose result link expired completes through download-url: finalize against moto,
the simulator over HTTP (its ``expired_result`` fault kills the first link)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial
from http.server import ThreadingHTTPServer
from typing import Any

import boto3
import httpx
import pytest

from aleph_pipeline.finalize import finalize_job
from aleph_pipeline.jobs import JobStore
from local.media import make_clip
from local.simulator.server import SimulatorServer

from .conftest import clear_caches
from .sim_servers import WAIT_SECONDS, QuietFiles, serve

pytestmark = pytest.mark.timeout(90)

JOB_ID = "feedfacefeedfacefeedfacefeedface"
KEY = "sim-kie-key"


@pytest.fixture(scope="module")
def media_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("kie-media")
    make_clip(folder / "input.mp4", seconds=3, size="320x240")
    yield from serve(ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietFiles, directory=str(folder))))


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with SimulatorServer("127.0.0.1", 0) as running:
        yield running.url


def expired_task(sim: str, media_url: str) -> tuple[str, str]:
    """A finished kie task whose first result link answers 404: its id and that link."""
    httpx.post(f"{sim}/_sim/faults", json=[{"fault": "expired_result", "provider": "kie"}]).raise_for_status()
    answer = httpx.post(
        f"{sim}/kie/api/v1/aleph/generate", json={"prompt": "snow", "videoUrl": f"{media_url}/input.mp4"}, headers={"Authorization": f"Bearer {KEY}"}
    )
    task_id = answer.json()["data"]["taskId"]
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        data = httpx.get(f"{sim}/kie/api/v1/aleph/record-info", params={"taskId": task_id}, headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
        if data["successFlag"] == 1:
            break
        assert time.monotonic() < deadline, f"the simulated task did not finish: {data}"
        time.sleep(0.1)
    assert data["expireFlag"] == 1
    link = data["response"]["resultVideoUrl"]
    assert httpx.get(link).status_code == 404
    return task_id, link


@pytest.mark.parametrize("confirm", ["true", "false"], ids=["confirmed-by-polling", "from-the-callback"])
def test_an_expired_result_link_is_refreshed_and_the_job_completes(
    aws: dict[str, Any], sim: str, media_url: str, monkeypatch: pytest.MonkeyPatch, confirm: str
) -> None:
    task_id, link = expired_task(sim, media_url)
    monkeypatch.setenv("PROVIDER_ENDPOINTS", json.dumps({"kie": f"{sim}/kie"}))
    monkeypatch.setenv("RESULT_HOSTS", json.dumps({"kie": ["127.0.0.1"]}))
    monkeypatch.setenv("ALLOW_HTTP_RESULT_URLS", "true")
    monkeypatch.setenv("CONFIRM_RESULTS_BY_POLLING", confirm)
    boto3.client("secretsmanager", endpoint_url=aws["s3"].meta.endpoint_url).put_secret_value(SecretId=aws["secret"], SecretString=json.dumps({"kie": KEY}))
    clear_caches()
    httpx.delete(f"{sim}/_sim/requests").raise_for_status()
    aws["table"].put_item(
        Item={
            "jobId": JOB_ID,
            "status": "SUCCEEDED",
            "provider": "kie",
            "providerTaskId": task_id,
            "outputPrefix": f"shot/{JOB_ID}/",
            "sidecarJson": json.dumps({"prompt": "snow"}),
            "result": {"videos": [link]},  # what the callback said: the link that expired since
            "history": [],
            "createdAt": "t0",
            "updatedAt": "t1",
        }
    )
    finalize_job(JOB_ID)

    job = JobStore().get(JOB_ID)
    assert job is not None and job.state.value == "COMPLETED", job.item if job else None
    body = aws["s3"].get_object(Bucket=aws["output"], Key=f"shot/{JOB_ID}/result.mp4")["Body"].read()
    assert body[4:8] == b"ftyp"  # the edit itself, not an error page
    asked = [entry for entry in httpx.get(f"{sim}/_sim/requests").json() if "download-url" in json.dumps(entry)]
    assert asked, "finalize never asked kie's download-url"


def test_download_url_refuses_foreign_urls_and_its_links_refuse_pythons_default_user_agent(sim: str, media_url: str) -> None:
    _, link = expired_task(sim, media_url)
    auth = {"Authorization": f"Bearer {KEY}"}
    foreign = httpx.post(f"{sim}/kie/api/v1/common/download-url", json={"url": "https://example.com/a.mp4"}, headers=auth).json()
    assert foreign["code"] == 422
    fresh = httpx.post(f"{sim}/kie/api/v1/common/download-url", json={"url": link}, headers=auth).json()["data"]
    refused = httpx.get(fresh)  # httpx's own "python-httpx/..." user agent
    assert (refused.status_code, refused.text) == (403, "error code: 1010")
    served = httpx.get(fresh, headers={"User-Agent": "aleph-pipeline/0.1.0"})
    assert served.status_code == 200 and served.content[4:8] == b"ftyp"
    other = httpx.post(f"{sim}/apikley/api/v1/common/download-url", json={"url": link}, headers={"Authorization": "Bearer sim-apikley-key"}).json()
    assert other["code"] == 422  # a kie link is not apikley's to refresh
