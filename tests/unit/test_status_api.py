"""The status function's answers (200, 404, 422) against the documented schema, and its route
against the documented one: the handler builds plain dicts and validates nothing itself, so these
tests hold it to ``schemas.status``'s models."""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

from aleph_pipeline.jobs import Job
from schemas.status import JobStatus, Message, ValidationFailure, documented_api
from tools import gen_docs

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "events" / "status" / "get-job.json"
JOB_ID = "0123456789abcdef0123456789abcdef"
PREFIX = f"team-a/shot1/{JOB_ID}/"

JOBS = {
    "RECEIVED": {
        "status": "RECEIVED",
        "sidecarKey": "incoming/team-a/shot1.json",
        "awaitingVideo": "incoming/team-a/shot1.mp4",
        "createdAt": "2026-01-01T00:00:00.000Z",
        "updatedAt": "2026-01-01T00:00:00.000Z",
        "history": [{"state": "RECEIVED", "at": "2026-01-01T00:00:00.000Z"}],
    },
    "COMPLETED": {
        "status": "COMPLETED",
        "provider": "kie",
        "model": "aleph",
        "sidecarKey": "incoming/team-a/shot1.json",
        "videoKey": "incoming/team-a/shot1.mp4",
        "outputPrefix": PREFIX,
        "cost": 1,
        "costEstimate": 0.75,
        "createdAt": "2026-01-01T00:00:00.000Z",
        "submittedAt": "2026-01-01T00:00:01.000Z",
        "updatedAt": "2026-01-01T00:01:00.500Z",
        "history": [{"state": state, "at": "2026-01-01T00:00:01.000Z"} for state in ("RECEIVED", "SUBMITTED", "SUCCEEDED", "COMPLETED")],
        "providersTried": [{"provider": "runware", "model": "runway:aleph@2.0", "reason": "out of credits", "code": "provider_refused", "providerCode": "x"}],
        "outputs": [{"key": f"{PREFIX}result.mp4", "size": 1234}, {"key": f"{PREFIX}cover.png"}],
    },
    "FAILED": {
        "status": "FAILED",
        "provider": "kie",
        "videoUrl": "https://videos.example/shot1.mp4",
        "outputPrefix": PREFIX,
        "createdAt": "2026-01-01T00:00:00Z",
        "updatedAt": "2026-01-01T00:00:03Z",
        "history": [{"state": "RECEIVED", "at": "2026-01-01T00:00:00Z"}, {"state": "FAILED", "at": "2026-01-01T00:00:03Z"}],
        "error": {"code": "generation_failed", "message": "the provider could not edit it", "stage": "provider", "retryable": True, "hint": "try again"},
    },
}


class Context:
    function_name = "status"
    memory_limit_in_mb = "256"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:status"
    aws_request_id = "status-request"


class Store:
    """The job store the handler reads, holding at most one job."""

    def __init__(self, item: dict[str, Any] | None) -> None:
        self.item = item
        self.reads: list[str] = []

    def get(self, job_id: str) -> Job | None:
        self.reads.append(job_id)
        return Job({"jobId": job_id, **self.item}) if self.item else None


def status_app() -> Any:
    spec = importlib.util.spec_from_file_location(f"status_app_{uuid.uuid4().hex}", ROOT / "functions" / "status" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Store:
    holder = Store(None)
    monkeypatch.setattr("aleph_pipeline.status.JobStore", lambda: holder)
    monkeypatch.setattr("aleph_pipeline.status.storage.presign_get", lambda bucket, key, ttl: f"https://signed.example/{bucket}/{key}?ttl={ttl}")
    return holder


def get(job_id: str) -> tuple[int, dict[str, Any]]:
    event = json.loads(SAMPLE.read_text())
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/jobs/{job_id}"
    event["pathParameters"] = {"jobId": job_id}
    answer = status_app().lambda_handler(event, Context())
    assert answer["headers"]["Content-Type"] == "application/json"
    body: dict[str, Any] = json.loads(answer["body"])
    return answer["statusCode"], body


@pytest.mark.parametrize("state", sorted(JOBS))
def test_a_job_answers_200_with_every_field_of_the_schema_in_its_order(store: Store, state: str) -> None:
    store.item = JOBS[state]
    status, body = get(JOB_ID)
    assert status == 200
    documented = JobStatus.model_validate(body).model_dump(mode="json")
    # The same fields and values as the model would answer, defaults and nulls included, in its order.
    assert json.dumps(body) == json.dumps(documented)
    assert (body["jobId"], body["state"], body["outputBucket"]) == (JOB_ID, state, "aleph-output")


def test_the_answers_carry_what_each_state_shows(store: Store) -> None:
    store.item = JOBS["RECEIVED"]
    _, received = get(JOB_ID)
    assert received["waitingFor"] == "awaiting the video `incoming/team-a/shot1.mp4`"
    assert (received["providersTried"], received["error"], received["outputs"], received["timings"]["finishedAt"]) == ([], None, [], None)

    store.item = JOBS["COMPLETED"]
    _, completed = get(JOB_ID)
    assert completed["timings"] == {
        "createdAt": "2026-01-01T00:00:00.000Z",
        "submittedAt": "2026-01-01T00:00:01.000Z",
        "finishedAt": "2026-01-01T00:01:00.500Z",
        "elapsedSeconds": 60.5,
    }
    assert (completed["cost"], completed["costEstimate"]) == (1.0, 0.75)
    # Only the schema's fields of each provider tried (not providerCode), a missing one null.
    [tried] = completed["providersTried"]
    assert tried == {"provider": "runware", "model": "runway:aleph@2.0", "reason": "out of credits", "code": "provider_refused", "at": None}
    sizes = [(link["key"], link["size"]) for link in completed["outputs"]]
    assert sizes == [(f"{PREFIX}result.mp4", 1234), (f"{PREFIX}cover.png", None), (f"{PREFIX}job.json", None)]
    assert completed["outputs"][0]["url"] == f"https://signed.example/aleph-output/{PREFIX}result.mp4?ttl=3600"

    store.item = JOBS["FAILED"]
    _, failed = get(JOB_ID)
    assert failed["error"] == JOBS["FAILED"]["error"]
    assert failed["inputKey"] == "https://videos.example/shot1.mp4"
    assert [link["key"] for link in failed["outputs"]] == [f"{PREFIX}error.json"]


def test_an_unknown_job_answers_404(store: Store) -> None:
    status, body = get(JOB_ID)
    assert status == 404
    assert Message.model_validate(body).model_dump() == body == {"statusCode": 404, "message": f"no job {JOB_ID}"}


@pytest.mark.parametrize("job_id", ["not-a-job", JOB_ID.upper(), JOB_ID + "0", JOB_ID[1:], "é" * 32])
def test_a_malformed_job_id_answers_422_as_request_validation_did_without_reading_the_table(store: Store, job_id: str) -> None:
    status, body = get(job_id)
    assert status == 422
    assert ValidationFailure.model_validate(body).model_dump() == body
    assert body == {"statusCode": 422, "detail": [{"loc": ["path", "jobId"], "type": "string_pattern_mismatch"}]}
    assert store.reads == []


def _routes(resolver: APIGatewayHttpResolver) -> set[tuple[str, str]]:
    # Powertools keeps a resolver's routes in two lists (with and without path parameters).
    return {(route.method, route.path) for route in resolver._static_routes + resolver._dynamic_routes}


def test_the_handler_answers_exactly_the_documented_routes() -> None:
    documented = _routes(documented_api())
    assert documented == {("GET", "/jobs/<jobId>")}
    assert _routes(status_app().app) == documented
    assert set(json.loads(gen_docs.openapi_document())["paths"]) == {"/jobs/{jobId}"}
