"""The handlers, in-process, fed the sample events under events/ against moto server over HTTP.

The samples are the same files `sam local invoke -e` takes; here they prove the handlers read
AWS's real shapes. Provider calls go to a closed port on 127.0.0.1, never outside.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from aleph_pipeline.jobs import JobStore, hash_token

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
JOB_ID = "0123456789abcdef0123456789abcdef"


class Context:
    function_name = "sample"
    memory_limit_in_mb = "512"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:sample"
    aws_request_id = "sample-request"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 120_000  # the submit function's timeout (template.yaml)


def load_handler(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"sample_{name}_{uuid.uuid4().hex}", ROOT / "functions" / name / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def event(path: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((EVENTS / path).read_text())
    return document


def submitted_job(aws: dict[str, Any], provider: str = "kie", task_id: str = "ee603959-debb-48d1-98c4-a6d1c717eba6") -> None:
    aws["table"].put_item(
        Item={
            "jobId": JOB_ID,
            "status": "SUBMITTED",
            "provider": provider,
            "tokenHash": hash_token("test-token"),
            "outputPrefix": f"team-a/shot1/{JOB_ID}/",
            "providerTaskId": task_id,
            "history": [{"state": "RECEIVED", "at": "t0"}, {"state": "SUBMITTED", "at": "t1"}],
            "updatedAt": "t1",
        }
    )


def status() -> str:
    job = JobStore().get(JOB_ID)
    assert job is not None
    return job.state.value


@pytest.mark.parametrize(
    ("sample", "provider"),
    [
        ("kie-shape-a-success", "kie"),
        ("kie-shape-b-success", "kie"),
        ("apikley-shape-b-success", "apikley"),
        ("crun-bare-success", "crun"),
        ("crun-wrapped-success", "crun"),
    ],
)
def test_callback_samples_move_a_submitted_job(aws: dict[str, Any], sample: str, provider: str) -> None:
    body = json.loads(event(f"callback/{sample}.json")["body"])
    submitted_job(aws, provider, body.get("taskId") or body.get("task_id") or body["data"]["task_id"])
    answer = load_handler("callback").lambda_handler(event(f"callback/{sample}.json"), Context())
    assert answer["statusCode"] == 200, answer
    assert status() == "SUCCEEDED"
    job = JobStore().get(JOB_ID)
    assert job is not None
    assert job.item["result"]["videos"][0].startswith("https://")


def test_callback_samples_refuse_and_fail(aws: dict[str, Any]) -> None:
    submitted_job(aws)
    other = dict(
        event("callback/kie-shape-a-success.json"),
        body=json.dumps({"code": 200, "msg": "success", "data": {"result_video_url": "https://tempfile.aiquickdraw.com/x.mp4"}, "taskId": "someone-else"}),
    )
    assert load_handler("callback").lambda_handler(other, Context())["statusCode"] == 400  # not this job's task
    handler = load_handler("callback").lambda_handler
    assert handler(event("callback/kie-missing-token.json"), Context())["statusCode"] == 401
    assert status() == "SUBMITTED"
    assert handler(event("callback/kie-failure.json"), Context())["statusCode"] == 200
    assert status() == "FAILED"
    error = json.loads(aws["s3"].get_object(Bucket=aws["output"], Key=f"team-a/shot1/{JOB_ID}/error.json")["Body"].read())
    assert error["code"] == "generation_failed"
    assert error["stage"] == "provider"
    again = handler(event("callback/kie-shape-a-success.json"), Context())
    assert again["statusCode"] == 200
    assert json.loads(again["body"])["status"] == "ignored"
    assert status() == "FAILED"


def test_submit_samples_pair_and_retry_a_refused_connection(aws: dict[str, Any]) -> None:
    aws["s3"].put_object(Bucket=aws["input"], Key="incoming/team-a/shot1.json", Body=b'{"prompt": "make it snow"}')
    handler = load_handler("submit").lambda_handler
    assert handler(event("submit/s3-test-event.json"), Context()) == {"batchItemFailures": []}
    assert handler(event("submit/sidecar-created.json"), Context()) == {"batchItemFailures": []}
    items = aws["table"].scan()["Items"]
    waiting = [item for item in items if "status" in item]
    assert [item["status"] for item in waiting] == ["RECEIVED"]
    # The header of an MP4 (an ftyp box): intake reads a video's first bytes before any provider call.
    aws["s3"].put_object(Bucket=aws["input"], Key="incoming/team-a/shot1.MP4", Body=b"\x00\x00\x00\x18ftypisom" + b"\x00" * 1012)
    video_event = event("submit/video-created-uppercase-ext.json")
    answer = handler(video_event, Context())
    # The provider's port is closed: nothing was sent, so the message is retried and the claim released.
    assert answer == {"batchItemFailures": [{"itemIdentifier": video_event["Records"][0]["messageId"]}]}
    job = JobStore().get(waiting[0]["jobId"])
    assert job is not None
    assert job.state.value == "RECEIVED"
    assert not job.submission_claimed
    assert job.item["videoKey"] == "incoming/team-a/shot1.MP4"


def test_submit_sample_with_space_and_plus_decodes_the_key(aws: dict[str, Any]) -> None:
    sample = event("submit/sidecar-created-space-and-plus.json")
    key = "incoming/team-a/my shot+1.json"
    assert json.loads(sample["Records"][0]["body"])["Records"][0]["s3"]["object"]["key"] == "incoming/team-a/my+shot%2B1.json"
    aws["s3"].put_object(Bucket=aws["input"], Key=key, Body=b"{not json")
    assert load_handler("submit").lambda_handler(sample, Context()) == {"batchItemFailures": []}
    jobs_found = [item for item in aws["table"].scan()["Items"] if item.get("sidecarKey") == key]
    assert [job["status"] for job in jobs_found] == ["FAILED"]
    assert jobs_found[0]["error"]["code"] == "invalid_json"


def test_finalize_sample_for_a_job_not_succeeded_changes_nothing(aws: dict[str, Any]) -> None:
    submitted_job(aws)
    assert load_handler("finalize").lambda_handler(event("finalize/job-succeeded.json"), Context()) == {"batchItemFailures": []}
    assert status() == "SUBMITTED"
    assert aws["s3"].list_objects_v2(Bucket=aws["output"]).get("KeyCount", 0) == 0


def test_runware_webhook_sample_records_one_of_two_results(aws: dict[str, Any]) -> None:
    body = json.loads(event("callback/runware-result.json")["body"])
    submitted_job(aws, "runware", body["data"][0]["taskUUID"])
    aws["table"].update_item(Key={"jobId": JOB_ID}, UpdateExpression="SET expectedResults = :two", ExpressionAttributeValues={":two": 2})
    handler = load_handler("callback").lambda_handler
    for _ in range(2):  # a repeated webhook is recorded once
        answer = handler(event("callback/runware-result.json"), Context())
        assert answer["statusCode"] == 200, answer
    job = JobStore().get(JOB_ID)
    assert job is not None
    assert job.state.value == "SUBMITTED"  # one result of two
    assert list(job.item["resultItems"]) == [body["data"][0]["videoUUID"]]


def test_notify_sample_puts_a_job_failed_event(aws: dict[str, Any], moto_server: str) -> None:
    from aleph_pipeline import notifications

    notifications._events_client.cache_clear()
    sqs = boto3.client("sqs", endpoint_url=moto_server)
    events = boto3.client("events", endpoint_url=moto_server)
    name = f"sample-events-{uuid.uuid4().hex[:8]}"
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=name, EventPattern=json.dumps({"source": ["aleph.pipeline"], "detail": {"jobId": [JOB_ID]}}))
    events.put_targets(Rule=name, Targets=[{"Id": "q", "Arn": arn}])
    try:
        assert load_handler("notify").lambda_handler(event("notify/job-failed.json"), Context()) == {"batchItemFailures": []}
        messages = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=5).get("Messages", [])
        assert len(messages) == 1
        sent = json.loads(messages[0]["Body"])
        assert sent["detail-type"] == "Job Failed"
        assert sent["detail"]["error"]["code"] == "generation_failed"
        assert sent["detail"]["outputKeys"] == [f"team-a/shot1/{JOB_ID}/error.json"]
    finally:
        events.remove_targets(Rule=name, Ids=["q"])
        events.delete_rule(Name=name)
        notifications._events_client.cache_clear()


def test_status_sample_answers_404_then_the_job(aws: dict[str, Any]) -> None:
    handler = load_handler("status").lambda_handler
    missing = handler(event("status/get-job.json"), Context())
    assert missing["statusCode"] == 404
    submitted_job(aws)
    found = handler(event("status/get-job.json"), Context())
    assert found["statusCode"] == 200
    body = json.loads(found["body"])
    assert (body["jobId"], body["state"], body["outputs"]) == (JOB_ID, "SUBMITTED", [])
