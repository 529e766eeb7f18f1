"""Finalize copies what the provider's status API reports, not what a callback claimed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from aleph_pipeline.finalize import finalize_job
from aleph_pipeline.jobs import JobStore

from .conftest import MP4_HEAD, clear_caches

JOB_ID = "1234567890abcdef1234567890abcdef"


class FakeKie(BaseHTTPRequestHandler):
    """kie.ai's record-info (what the provider says) and two result files (true and forged)."""

    record: ClassVar[dict[str, Any]] = {}
    fetched: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path.endswith("/api/v1/aleph/record-info"):
            assert parse_qs(url.query)["taskId"] == ["task-1"]
            body = json.dumps({"code": 200, "msg": "success", "data": {"taskId": "task-1", **FakeKie.record}}).encode()
        else:
            FakeKie.fetched.append(url.path)
            body = MP4_HEAD + url.path.encode() * 100
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def provider_url(aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKie)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("PROVIDER_ENDPOINTS", json.dumps({"kie": url}))
    monkeypatch.setenv("RESULT_HOSTS", json.dumps({"kie": ["127.0.0.1"]}))
    monkeypatch.setenv("ALLOW_HTTP_RESULT_URLS", "true")
    clear_caches()
    FakeKie.fetched = []
    aws["table"].put_item(
        Item={
            "jobId": JOB_ID,
            "status": "SUCCEEDED",
            "provider": "kie",
            "providerTaskId": "task-1",
            "outputPrefix": f"shot/{JOB_ID}/",
            "sidecarJson": json.dumps({"prompt": "snow"}),
            "result": {"videos": [f"{url}/forged.mp4"]},  # what the callback claimed
            "history": [],
            "createdAt": "t0",
            "updatedAt": "t1",
        }
    )
    yield url
    server.shutdown()


def test_the_providers_own_answer_is_copied(aws: dict[str, Any], provider_url: str) -> None:
    FakeKie.record = {"successFlag": 1, "response": {"resultVideoUrl": f"{provider_url}/true.mp4"}, "errorMessage": ""}
    finalize_job(JOB_ID)
    assert FakeKie.fetched == ["/true.mp4"]
    body = aws["s3"].get_object(Bucket=aws["output"], Key=f"shot/{JOB_ID}/result.mp4")["Body"].read()
    assert body == MP4_HEAD + b"/true.mp4" * 100
    job = JobStore().get(JOB_ID)
    assert job is not None
    assert job.state.value == "COMPLETED"


def test_a_success_callback_the_provider_denies_fails_the_job_and_copies_nothing(aws: dict[str, Any], provider_url: str) -> None:
    FakeKie.record = {"successFlag": 0, "response": None, "errorMessage": "Your prompt was caught by our AI moderator."}
    finalize_job(JOB_ID)
    assert FakeKie.fetched == []
    job = JobStore().get(JOB_ID)
    assert job is not None
    assert job.state.value == "FAILED"
    assert job.item["error"]["message"] == "Your prompt was caught by our AI moderator."
    keys = [entry["Key"] for entry in aws["s3"].list_objects_v2(Bucket=aws["output"]).get("Contents", [])]
    assert keys == [f"shot/{JOB_ID}/error.json"]


def test_a_task_still_running_is_retried_later(aws: dict[str, Any], provider_url: str) -> None:
    from aleph_pipeline.errors import TransientError

    FakeKie.record = {"successFlag": 0, "response": None, "errorMessage": ""}
    with pytest.raises(TransientError):
        finalize_job(JOB_ID)
    assert FakeKie.fetched == []
    job = JobStore().get(JOB_ID)
    assert job is not None
    assert job.state.value == "SUCCEEDED"
