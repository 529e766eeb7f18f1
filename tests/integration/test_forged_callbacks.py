"""The https rule of callback result URLs, with the production settings (which the local stack
relaxes to let the simulator serve results over http from 127.0.0.1): an ``http://`` URL on the
provider's own host is refused and changes nothing. The rest of the forged-callback corpus runs
end to end in ``tests/e2e/test_forged_callbacks.py``."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import boto3
import pytest

from aleph_pipeline.callbacks import receive_callback
from aleph_pipeline.config import get_settings
from aleph_pipeline.jobs import hash_token
from aleph_pipeline.providers import get_provider
from aleph_pipeline.storage import check_url

JOB_ID = "5" * 32
TOKEN = "a-per-job-token-of-the-usual-length-0123456789"
TASK_ID = "kie-task-1"


@pytest.fixture
def waiting_job(aws: dict[str, Any]) -> dict[str, Any]:
    item = {
        "jobId": JOB_ID,
        "status": "SUBMITTED",
        "provider": "kie",
        "model": "aleph",
        "providerTaskId": TASK_ID,
        "tokenHash": hash_token(TOKEN),
        "outputPrefix": f"shot/{JOB_ID}/",
        "history": [{"state": "RECEIVED", "at": "2026-01-01T00:00:00.000Z"}, {"state": "SUBMITTED", "at": "2026-01-01T00:00:01.000Z"}],
        "updatedAt": "2026-01-01T00:00:01.000Z",
    }
    aws["table"].put_item(Item=item)
    return item


@pytest.mark.parametrize("host", ["tempfile.aiquickdraw.com", "kie.ai"])
def test_http_result_url_on_the_providers_own_host_is_refused(aws: dict[str, Any], waiting_job: dict[str, Any], host: str) -> None:
    settings = get_settings()
    assert settings.allow_http_result_urls is False and settings.result_hosts == {}  # production defaults
    http_url = f"http://{host}/v/result.mp4"
    body = json.dumps({"code": 200, "msg": "success", "data": {"result_video_url": http_url, "result_image_url": None}, "taskId": TASK_ID}).encode()

    answer = receive_callback("kie", JOB_ID, TOKEN, body, {})

    assert answer.status == 400
    assert "allowed hosts" in answer.body["message"]
    assert aws["table"].get_item(Key={"jobId": JOB_ID}, ConsistentRead=True)["Item"] == waiting_job
    assert aws["s3"].list_objects_v2(Bucket=aws["output"]).get("KeyCount", 0) == 0
    # The same URL over https passes the same check: the scheme alone was refused.
    check_url(http_url.replace("http://", "https://"), get_provider("kie").allowed_result_hosts, settings.allow_http_result_urls)


# ---- malformed callbacks: every one is answered 400 or 401, never 500 (Runware retries any
# non-2xx), and none changes the job. Each case runs against a job waiting for its result, with a
# valid token, so the request gets past the token check to the parser, the URL check and the store.
KIE_SIGNING_KEY = "kie-webhook-signing-key"
RUNWARE_TASK = "0b1c2d3e-0000-4000-8000-000000000001"


def kie_success(video: str, cover: str | None = None, task_id: Any = TASK_ID) -> bytes:
    return json.dumps({"code": 200, "msg": "success", "data": {"result_video_url": video, "result_image_url": cover}, "taskId": task_id}).encode()


def runware_item(**fields: Any) -> bytes:
    item = {"taskType": "videoInference", "taskUUID": RUNWARE_TASK, "status": "success", "videoUUID": "v-1", "videoURL": "https://vm.runware.ai/v.mp4"}
    return json.dumps({"data": [{**item, **fields}]}, allow_nan=True).encode()


def kie_signed(timestamp: str, signature: str) -> dict[str, str]:
    return {"X-Webhook-Timestamp": timestamp, "X-Webhook-Signature": signature}


CRUN_HUGE_STATUS = json.dumps({"task_id": "crun-1", "status": "x" * 900_000}).encode()
MALFORMED: list[tuple[str, str, bytes, dict[str, str], int]] = [
    ("kie result URL with an unclosed IPv6 bracket", "kie", kie_success("https://[tempfile.aiquickdraw.com/v.mp4"), {}, 400),
    ("kie result URL with fullwidth dots", "kie", kie_success("https://tempfile．aiquickdraw．com/v.mp4"), {}, 400),
    # The cover is optional: a refused one is dropped and the video still counts (never fetched).
    ("kie cover URL with a fullwidth '#' before '@'", "kie", kie_success("https://tempfile.aiquickdraw.com/v.mp4", "https://evil＃@kie.ai/c.jpg"), {}, 200),
    ("kie result URL with a zero-width joiner (IDNA fails)", "kie", kie_success("https://a\u200d.kie.ai/v.mp4"), {}, 400),
    ("kie result URL with a port out of range", "kie", kie_success("https://kie.ai:99999/v.mp4"), {}, 400),
    ("kie result URL with a NUL", "kie", kie_success("https://kie.ai/v\x00.mp4"), {}, 400),
    ("kie result URL with a lone surrogate", "kie", kie_success("https://kie.ai/\udc80.mp4"), {}, 400),
    ("kie result URL of 900 KB", "kie", kie_success("https://kie.ai/" + "v" * 900_000), {}, 400),
    ("kie number beyond int()'s digit limit", "kie", b'{"code": 2' + b"0" * 5000 + b"}", {}, 400),
    ("kie task id with a lone surrogate", "kie", kie_success("https://kie.ai/v.mp4", task_id="\ud800"), {}, 400),
    ("kie failure whose message has a lone surrogate", "kie", json.dumps({"code": 501, "msg": "bad \udcff", "taskId": TASK_ID}).encode(), {}, 200),
    ("Runware taskUUID as a list", "runware", runware_item(taskUUID=[RUNWARE_TASK]), {}, 400),
    ("Runware cost NaN", "runware", runware_item(cost=float("nan")), {}, 200),
    ("Runware cost Infinity", "runware", runware_item(cost=float("inf")), {}, 200),
    ("Runware seed of 60 digits", "runware", runware_item(seed=10**60), {}, 200),
    ("Runware result URL with fullwidth dots", "runware", runware_item(videoURL="https://vm．runware．ai/x.mp4"), {}, 400),
    ("Runware result id of 300 KB", "runware", runware_item(videoUUID="u" * 300_000), {}, 400),
    (
        "Runware error code of 500 KB",
        "runware",
        json.dumps({"errors": [{"code": "c" * 500_000, "message": "m" * 400_000, "taskUUID": RUNWARE_TASK}]}).encode(),
        {},
        200,
    ),
    (
        "crun media URL with an unclosed bracket",
        "crun",
        json.dumps({"task_id": "crun-1", "status": "success", "result": {"media_urls": ["https://[x"]}}).encode(),
        {},
        400,
    ),
    ("crun unknown status of 900 KB (echoed back shortened)", "crun", CRUN_HUGE_STATUS, {}, 400),
]
SIGNED: list[tuple[str, dict[str, str], int]] = [
    ("superscript timestamp", kie_signed("²", "c2lnbmF0dXJl"), 401),
    ("fullwidth-digit timestamp", kie_signed("１７００００００００", "c2lnbmF0dXJl"), 401),
    ("5,000-digit timestamp", kie_signed("9" * 5000, "c2lnbmF0dXJl"), 401),
    ("non-ASCII signature", kie_signed(str(int(time.time())), "签名签名"), 401),
    ("signature with a lone surrogate", kie_signed(str(int(time.time())), "\udcff"), 401),
]


def _waiting(aws: dict[str, Any], provider: str, task_id: str | None) -> dict[str, Any]:
    item = {
        "jobId": JOB_ID,
        "status": "SUBMITTED",
        "provider": provider,
        "model": "aleph",
        "tokenHash": hash_token(TOKEN),
        "outputPrefix": f"shot/{JOB_ID}/",
        "history": [{"state": "RECEIVED", "at": "2026-01-01T00:00:00.000Z"}, {"state": "SUBMITTED", "at": "2026-01-01T00:00:01.000Z"}],
        "updatedAt": "2026-01-01T00:00:01.000Z",
    }
    if task_id:
        item["providerTaskId"] = task_id
    aws["table"].put_item(Item=item)
    return item


@pytest.mark.parametrize("case", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_a_malformed_callback_is_answered_400_never_500(aws: dict[str, Any], case: tuple[str, str, bytes, dict[str, str], int]) -> None:
    _name, provider, body, headers, status = case
    # No task id yet (the callback came before the submit answer): the callback's own id is what gets stored.
    before = _waiting(aws, provider, None)

    answer = receive_callback(provider, JOB_ID, TOKEN, body, headers)

    assert answer.status == status, answer
    json.dumps(answer.body)  # the handler serialises it
    assert len(json.dumps(answer.body)) < 4096
    after = aws["table"].get_item(Key={"jobId": JOB_ID}, ConsistentRead=True)["Item"]
    if status == 400:
        assert after == before
        assert aws["s3"].list_objects_v2(Bucket=aws["output"]).get("KeyCount", 0) == 0
    else:  # a well-formed outcome: recorded within DynamoDB's limits, error.json written for a failure
        assert after["status"] in ("SUCCEEDED", "FAILED")
        assert "evil" not in json.dumps(after.get("result", {}), default=str)  # a refused cover is never kept
        if after["status"] == "FAILED":
            error = json.loads(aws["s3"].get_object(Bucket=aws["output"], Key=f"shot/{JOB_ID}/error.json")["Body"].read())
            assert len(error["message"]) <= 5000


@pytest.mark.parametrize(("name", "headers", "status"), SIGNED, ids=[case[0] for case in SIGNED])
def test_a_hostile_kie_signature_is_answered_401(aws: dict[str, Any], waiting_job: dict[str, Any], name: str, headers: dict[str, str], status: int) -> None:
    aws_secrets = boto3.client("secretsmanager", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    aws_secrets.put_secret_value(SecretId=aws["secret"], SecretString=json.dumps({"kie": {"apiKey": "k", "webhookHmacKey": KIE_SIGNING_KEY}}))

    answer = receive_callback("kie", JOB_ID, TOKEN, kie_success("https://tempfile.aiquickdraw.com/v.mp4"), headers)

    assert answer.status == status, answer
    assert aws["table"].get_item(Key={"jobId": JOB_ID}, ConsistentRead=True)["Item"] == waiting_job


@pytest.mark.parametrize("token", ["\udcff", "签名", "a" * 5000, TOKEN + "\n"])
def test_a_hostile_token_is_answered_401(aws: dict[str, Any], waiting_job: dict[str, Any], token: str) -> None:
    answer = receive_callback("kie", JOB_ID, token, kie_success("https://tempfile.aiquickdraw.com/v.mp4"), {})
    assert answer.status == 401, answer
    assert aws["table"].get_item(Key={"jobId": JOB_ID}, ConsistentRead=True)["Item"] == waiting_job


def test_a_job_id_with_a_trailing_newline_is_no_job(aws: dict[str, Any], waiting_job: dict[str, Any]) -> None:
    answer = receive_callback("kie", JOB_ID + "\n", TOKEN, kie_success("https://tempfile.aiquickdraw.com/v.mp4"), {})
    assert answer.status == 404
