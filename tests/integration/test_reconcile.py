"""The reconciler's decisions against DynamoDB on moto server (the status index, real queries)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from aleph_pipeline.jobs import JobStore
from aleph_pipeline.providers import PROVIDER_IDS
from aleph_pipeline.reconcile import reconcile
from aleph_pipeline.storage import head

from .conftest import clear_caches

LONG_AGO = "2020-01-01T00:00:00.000Z"


@pytest.fixture
def indexed(aws: dict[str, Any]) -> dict[str, Any]:
    """The table as the template declares it: with the by-status index."""
    client = aws["table"].meta.client
    client.update_table(
        TableName=aws["table_name"],
        AttributeDefinitions=[{"AttributeName": "status", "AttributeType": "S"}, {"AttributeName": "updatedAt", "AttributeType": "S"}],
        GlobalSecondaryIndexUpdates=[
            {
                "Create": {
                    "IndexName": "by-status",
                    "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}, {"AttributeName": "updatedAt", "KeyType": "RANGE"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            }
        ],
    )
    return aws


def put(aws: dict[str, Any], job_id: str, status: str, **extra: Any) -> None:
    item = {"jobId": job_id, "status": status, "provider": "kie", "outputPrefix": f"x/{job_id}/", "history": [], "updatedAt": LONG_AGO, **extra}
    aws["table"].put_item(Item=item)


def state(job_id: str) -> str:
    job = JobStore().get(job_id)
    assert job is not None
    return job.state.value


def test_succeeded_job_is_nudged_then_failed(indexed: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINALIZE_MAX_NUDGES", "2")
    monkeypatch.setenv("FINALIZE_GRACE_SECONDS", "0")
    clear_caches()
    job_id = "a" * 32
    put(indexed, job_id, "SUCCEEDED", result={"videos": ["https://kie.ai/v.mp4"]})
    later = time.time() + 5
    assert reconcile(later).nudged == 1
    assert reconcile(later + 5).nudged == 1
    job = JobStore().get(job_id)
    assert job is not None
    assert (job.state.value, int(job.item["finalizeNudges"])) == ("SUCCEEDED", 2)
    report = reconcile(later + 10)
    assert (report.nudged, report.timed_out) == (0, 1)
    assert state(job_id) == "FAILED"
    error = json.loads(indexed["s3"].get_object(Bucket=indexed["output"], Key=f"x/{job_id}/error.json")["Body"].read())
    assert error["code"] == "result_unavailable"


def test_pairing_deadline_and_fresh_jobs(indexed: dict[str, Any]) -> None:
    now = time.time()
    # A sidecar whose video never came: intake, run once more before the failure, still waits.
    indexed["s3"].put_object(Bucket=indexed["input"], Key="incoming/b.json", Body=b'{"prompt": "snow"}')
    info = head(indexed["input"], "incoming/b.json")
    assert info is not None
    sidecar = {"inputBucket": indexed["input"], "sidecarKey": "incoming/b.json", "sidecarVersion": info.version_marker}
    put(indexed, "b" * 32, "RECEIVED", pairingDeadline=int(now) - 10, **sidecar)
    put(indexed, "c" * 32, "RECEIVED", pairingDeadline=int(now) + 3600)
    put(indexed, "d" * 32, "RECEIVED", pairingDeadline=int(now) - 10, updatedAt="2999-01-01T00:00:00.000Z")  # not stale yet
    report = reconcile(now)
    assert report.timed_out == 1
    assert [state(job_id * 32) for job_id in "bcd"] == ["FAILED", "RECEIVED", "RECEIVED"]


def test_unconfirmed_submission_is_never_resubmitted_and_times_out(indexed: dict[str, Any]) -> None:
    now = time.time()
    claim = {"claimId": "x", "claimedAt": "2020-01-01T00:00:00.000Z"}
    put(indexed, "e" * 32, "RECEIVED", submission=claim, deadlineAt=int(now) + 3600)
    put(indexed, "f" * 32, "RECEIVED", submission=claim, deadlineAt=int(now) - 1)
    report = reconcile(now)
    assert report.polled == 0  # kie assigns its own task ids: nothing of ours to poll by
    assert [state("e" * 32), state("f" * 32)] == ["RECEIVED", "FAILED"]


def test_a_failing_provider_poll_does_not_stop_the_sweep(indexed: dict[str, Any]) -> None:
    now = time.time()
    for letter in "0123":
        put(indexed, letter * 32, "SUBMITTED", providerTaskId=f"task-{letter}", deadlineAt=int(now) + 3600)
    report = reconcile(now)
    # The provider's port is closed: after two failed polls the provider is left for the next run;
    # each job stays SUBMITTED and is marked as examined, so the next run looks at others first.
    assert (report.examined, report.polled, report.errors, report.skipped_providers) == (4, 2, 0, 1)
    assert {state(letter * 32) for letter in "0123"} == {"SUBMITTED"}
    assert all("lastPolledAt" in JobStore().get(letter * 32).item for letter in "0123")  # type: ignore[union-attr]


class _ForeignResult(BaseHTTPRequestHandler):
    """Runware answering every getResponse with a finished task whose result is on a foreign host."""

    def do_POST(self) -> None:
        tasks = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        item = {
            "taskType": "videoInference",
            "taskUUID": tasks[-1]["taskUUID"],
            "status": "success",
            "videoUUID": str(uuid.uuid4()),
            "videoURL": "https://169.254.169.254/latest/meta-data",
            "cost": 0.7,
        }
        body = json.dumps({"data": [item]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def foreign_runware(indexed: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ForeignResult)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoints = {**dict.fromkeys(PROVIDER_IDS, "http://127.0.0.1:9"), "runware": f"http://127.0.0.1:{server.server_address[1]}"}
    monkeypatch.setenv("PROVIDER_ENDPOINTS", json.dumps(endpoints))
    clear_caches()
    try:
        yield indexed
    finally:
        server.shutdown()
        server.server_close()


def test_a_refused_result_url_does_not_keep_a_job_open_past_its_deadline(foreign_runware: dict[str, Any]) -> None:
    """Found by the chaos run: a poll whose result URL was refused returned before the deadline
    check, so such a job stayed SUBMITTED (or RECEIVED) for ever."""
    now = time.time()
    claim = {"claimId": "x", "claimedAt": LONG_AGO}
    put(foreign_runware, "1" * 32, "SUBMITTED", provider="runware", providerTaskId=str(uuid.uuid4()), deadlineAt=int(now) - 1)
    put(foreign_runware, "2" * 32, "SUBMITTED", provider="runware", providerTaskId=str(uuid.uuid4()), deadlineAt=int(now) + 3600)
    put(foreign_runware, "3" * 32, "RECEIVED", provider="runware", submission=claim, deadlineAt=int(now) - 1)
    report = reconcile(now)
    assert (report.polled, report.settled, report.timed_out) == (3, 0, 2)
    assert [state(digit * 32) for digit in "123"] == ["FAILED", "SUBMITTED", "FAILED"]
    for digit, code in (("1", "deadline_exceeded"), ("3", "submit_ambiguous")):
        error = json.loads(foreign_runware["s3"].get_object(Bucket=foreign_runware["output"], Key=f"x/{digit * 32}/error.json")["Body"].read())
        assert error["code"] == code
    waiting = JobStore().get("2" * 32)
    assert waiting is not None and "lastPolledAt" in waiting.item and "result" not in waiting.item  # polled, nothing taken from the answer


def test_claims_are_left_alone_for_the_claim_settle_time(indexed: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAIM_SETTLE_SECONDS", "5")
    clear_caches()
    now = time.time()
    fresh = {"claimId": "x", "claimedAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now - 2))}
    settled = {"claimId": "y", "claimedAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now - 10))}
    put(indexed, "7" * 32, "RECEIVED", submission=fresh, deadlineAt=int(now) - 1)
    put(indexed, "8" * 32, "RECEIVED", submission=settled, deadlineAt=int(now) - 1)
    assert reconcile(now).timed_out == 1
    assert [state("7" * 32), state("8" * 32)] == ["RECEIVED", "FAILED"]


def test_an_older_failure_without_error_json_is_repaired_however_many_failed_after_it(indexed: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the 500-job chaos run: the repair looked at the newest failures only, so a job cut
    off before its error.json stayed without one once more than a batch of jobs failed after it."""
    from aleph_pipeline.errors import JobError
    from aleph_pipeline.outputs import fail_job

    monkeypatch.setenv("RECONCILE_BATCH_SIZE", "3")
    clear_caches()
    store = JobStore()
    recent = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 60))
    # The oldest failure's invocation was cut off between the FAILED write and error.json.
    put(indexed, "0" * 32, "FAILED", updatedAt=recent, error={"code": "generation_failed", "message": "m", "stage": "provider"})
    newer = [f"{index:032d}" for index in range(1, 8)]  # more than a batch, each with its error.json
    for job_id in newer:
        put(indexed, job_id, "RECEIVED")
        fail_job(store, job_id, JobError("generation_failed", "the provider failed it", "provider"))
    report = reconcile()
    assert report.repaired == 1
    document = json.loads(indexed["s3"].get_object(Bucket=indexed["output"], Key=f"x/{'0' * 32}/error.json")["Body"].read())
    assert document["code"] == "generation_failed"
    # Noted as written: the next run has nothing to repair and reads no error.json again.
    assert reconcile().repaired == 0 and reconcile().examined == 0
