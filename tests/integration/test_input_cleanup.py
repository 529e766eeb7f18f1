"""InputCleanup through finalize against moto server: tag, delete, and a video shared by jobs in flight."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from aleph_pipeline.finalize import finalize_job
from aleph_pipeline.jobs import JobStore

from . import test_reconcile
from .conftest import MP4_HEAD, clear_caches

indexed = test_reconcile.indexed  # the table as the template declares it: with the by-status index

SIDECAR = "incoming/shot.json"
VIDEO = "incoming/shot.mp4"


class Result(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        # not-a-video.mp4: a result that is not the MP4 asked for, so the job fails
        body = b"<html>not a video</html>" if self.path.endswith("not-a-video.mp4") else MP4_HEAD + b"\x00" * 64
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def result_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Result)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def cleanup_mode(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("INPUT_CLEANUP", mode)
    monkeypatch.setenv("RESULT_HOSTS", json.dumps({"kie": ["127.0.0.1"]}))
    monkeypatch.setenv("ALLOW_HTTP_RESULT_URLS", "true")
    monkeypatch.setenv("CONFIRM_RESULTS_BY_POLLING", "false")  # about the inputs, not the confirmation
    clear_caches()


def upload(aws: dict[str, Any], key: str, body: bytes) -> str:
    etag: str = aws["s3"].put_object(Bucket=aws["input"], Key=key, Body=body)["ETag"].strip('"')
    return etag


def put_job(aws: dict[str, Any], job_id: str, status: str, *, sidecar: str = SIDECAR, video: str | None = VIDEO, result: str = "", **extra: Any) -> None:
    item: dict[str, Any] = {
        "jobId": job_id,
        "status": status,
        "provider": "kie",
        "model": "aleph",
        "inputBucket": aws["input"],
        "sidecarKey": sidecar,
        "outputPrefix": f"out/{job_id}/",
        "sidecarJson": json.dumps({"prompt": "snow"}),
        "history": [{"state": "RECEIVED", "at": "2026-01-01T00:00:00.000Z"}],
        "updatedAt": "2026-01-01T00:00:01.000Z",
        **extra,
    }
    if video:
        item["videoKey"] = video
    if result:
        item["result"] = {"videos": [result]}
    aws["table"].put_item(Item=item)


def completed_job(aws: dict[str, Any], result_base: str, job_id: str = "job-a", result: str = "result.mp4", **extra: Any) -> None:
    """A SUCCEEDED job of SIDECAR and VIDEO (both uploaded), its result served at ``result_base``."""
    sidecar_etag = upload(aws, SIDECAR, b'{"prompt": "snow"}')
    video_etag = upload(aws, VIDEO, MP4_HEAD + b"video")
    put_job(aws, job_id, "SUCCEEDED", result=f"{result_base}/{result}", sidecarETag=sidecar_etag, videoETag=video_etag, **extra)


def exists(aws: dict[str, Any], key: str) -> bool:
    return "Contents" in aws["s3"].list_objects_v2(Bucket=aws["input"], Prefix=key)


def tags(aws: dict[str, Any], key: str) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in aws["s3"].get_object_tagging(Bucket=aws["input"], Key=key)["TagSet"]}


def state(job_id: str) -> str:
    job = JobStore().get(job_id)
    assert job is not None
    return job.state.value


def test_tag_mode_tags_both_inputs_and_keeps_their_own_tags(indexed: dict[str, Any], result_base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cleanup_mode(monkeypatch, "tag")
    completed_job(indexed, result_base)
    indexed["s3"].put_object_tagging(Bucket=indexed["input"], Key=VIDEO, Tagging={"TagSet": [{"Key": "team", "Value": "blue"}]})
    finalize_job("job-a")
    assert state("job-a") == "COMPLETED"
    assert tags(indexed, SIDECAR) == {"aleph-pipeline": "processed", "aleph-job-id": "job-a"}
    assert tags(indexed, VIDEO) == {"team": "blue", "aleph-pipeline": "processed", "aleph-job-id": "job-a"}


def test_delete_mode_deletes_both_inputs_once_completed(indexed: dict[str, Any], result_base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cleanup_mode(monkeypatch, "delete")
    completed_job(indexed, result_base)
    finalize_job("job-a")
    assert state("job-a") == "COMPLETED"
    assert not exists(indexed, SIDECAR)
    assert not exists(indexed, VIDEO)


def test_none_mode_and_a_failed_job_leave_the_inputs(indexed: dict[str, Any], result_base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cleanup_mode(monkeypatch, "none")
    completed_job(indexed, result_base)
    finalize_job("job-a")
    assert state("job-a") == "COMPLETED"
    assert exists(indexed, SIDECAR) and exists(indexed, VIDEO)

    cleanup_mode(monkeypatch, "delete")
    completed_job(indexed, result_base, job_id="job-b", result="not-a-video.mp4")
    finalize_job("job-b")
    assert state("job-b") == "FAILED"
    assert exists(indexed, SIDECAR) and exists(indexed, VIDEO)


def test_a_shared_video_is_kept_until_the_last_job_using_it_completes(indexed: dict[str, Any], result_base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cleanup_mode(monkeypatch, "delete")
    completed_job(indexed, result_base)
    other_sidecar = "incoming/other.json"
    other_etag = upload(indexed, other_sidecar, b'{"prompt": "rain", "video": "shot.mp4"}')
    video_etag = indexed["s3"].head_object(Bucket=indexed["input"], Key=VIDEO)["ETag"].strip('"')
    put_job(indexed, "job-b", "SUBMITTED", sidecar=other_sidecar, sidecarETag=other_etag, videoETag=video_etag)

    finalize_job("job-a")
    assert state("job-a") == "COMPLETED"
    assert not exists(indexed, SIDECAR)
    assert exists(indexed, VIDEO), "job-b's provider may still be reading the video"

    # job-b succeeds and completes: the last user of the video deletes it.
    indexed["table"].update_item(
        Key={"jobId": "job-b"}, UpdateExpression="SET #s = :s, #r = :r", ExpressionAttributeNames={"#s": "status", "#r": "result"},
        ExpressionAttributeValues={":s": "SUCCEEDED", ":r": {"videos": [f"{result_base}/result.mp4"]}},
    )  # fmt: skip
    finalize_job("job-b")
    assert state("job-b") == "COMPLETED"
    assert not exists(indexed, VIDEO)
    assert not exists(indexed, other_sidecar)


def test_a_variant_of_the_same_sidecar_in_flight_keeps_both_inputs(indexed: dict[str, Any], result_base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cleanup_mode(monkeypatch, "delete")
    completed_job(indexed, result_base)
    put_job(indexed, "job-a-variant-2", "RECEIVED", video=None)  # not submitted yet: it reads the sidecar again
    finalize_job("job-a")
    assert state("job-a") == "COMPLETED"
    assert exists(indexed, SIDECAR) and exists(indexed, VIDEO)


AWAITING = [("incoming/shot.<mp4|mov|webm|avi|m4v>", True), ("incoming/shot.mp4", True), (None, True), ("incoming/other.mp4", False)]


@pytest.mark.parametrize(("awaiting", "kept"), AWAITING)
def test_a_job_not_yet_paired_keeps_the_video_it_may_take(
    indexed: dict[str, Any], result_base: str, monkeypatch: pytest.MonkeyPatch, awaiting: str | None, kept: bool
) -> None:
    cleanup_mode(monkeypatch, "delete")
    completed_job(indexed, result_base)
    extra = {"awaitingVideo": awaiting} if awaiting else {}
    put_job(indexed, "job-b", "RECEIVED", sidecar="incoming/shot-b.json", video=None, **extra)
    finalize_job("job-a")
    assert state("job-a") == "COMPLETED"
    assert not exists(indexed, SIDECAR)
    assert exists(indexed, VIDEO) is kept


def test_a_video_uploaded_again_since_the_job_read_it_is_kept(indexed: dict[str, Any], result_base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cleanup_mode(monkeypatch, "delete")
    completed_job(indexed, result_base)
    upload(indexed, VIDEO, MP4_HEAD + b"a new take")
    finalize_job("job-a")
    assert not exists(indexed, SIDECAR)
    assert exists(indexed, VIDEO)


def test_a_video_given_by_url_is_left_alone(indexed: dict[str, Any], result_base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cleanup_mode(monkeypatch, "delete")
    completed_job(indexed, result_base)
    indexed["table"].update_item(
        Key={"jobId": "job-a"},
        UpdateExpression="REMOVE videoKey, videoETag SET videoUrl = :u",
        ExpressionAttributeValues={":u": "https://example.com/shot.mp4"},
    )
    finalize_job("job-a")
    assert state("job-a") == "COMPLETED"
    assert not exists(indexed, SIDECAR)
    assert exists(indexed, VIDEO)


def test_a_failed_clean_up_never_fails_the_job(
    indexed: dict[str, Any], result_base: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cleanup_mode(monkeypatch, "tag")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "AlephPipeline")
    completed_job(indexed, result_base)
    indexed["s3"].delete_object(Bucket=indexed["input"], Key=VIDEO)  # tagging a missing object fails
    finalize_job("job-a")
    assert state("job-a") == "COMPLETED"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    failures = [line for line in lines if "InputCleanupFailed" in json.dumps(line.get("_aws", {}))]
    assert [(line["Mode"], line["InputCleanupFailed"], line["jobId"]) for line in failures] == [("tag", [1.0], "job-a")]
