"""The local stack's plumbing, over real HTTP: moto server -> dispatcher -> (fake) handlers.

One stack subprocess runs with tiny fake handlers written here, which record every event they
get (one JSON file per invocation) and answer as the test needs. Every wait is on a condition,
and bounded. The filter matcher, the event builders and the template reading are unit-tested.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import httpx
import pytest

from aleph_pipeline.providers import PROVIDER_IDS
from local.apigw import Route, build_http_event, find_route, http_response, is_text_content
from local.client import REPO_ROOT, aws_client, read_stack_info, wait_for
from local.dispatcher import ScheduleEventSource, StreamEventSource, build_sqs_event, build_stream_record, failed_item_ids
from local.event_filter import load_pattern, matches, matches_any
from local.lambda_runtime import LambdaFunction
from local.stack import LOCAL_PROVIDERS, spawn, terminate
from local.template_config import CONTRACT_FINALIZE_FILTER, load_template_config, parse_rate

WAIT = 20.0  # seconds; every wait below is bounded by this

ENV_NAMES = [
    "JOBS_TABLE_NAME",
    "INPUT_BUCKET_NAME",
    "OUTPUT_BUCKET_NAME",
    "INPUT_PREFIX",
    "DEFAULT_PROVIDER",
    "CALLBACK_API_URL",
    "PROVIDER_SECRET_ID",
    "PRESIGNED_URL_TTL_SECONDS",
    "PAIRING_TIMEOUT_SECONDS",
    "JOB_DEADLINE_SECONDS",
    "PROVIDER_ENDPOINTS",
    "RESULT_HOSTS",
    "ALLOW_HTTP_RESULT_URLS",
    "MAX_RESULT_BYTES",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
]

_RECORDER = """
import json, os, pathlib, uuid

OUT = pathlib.Path({out!r})
ENV_NAMES = {env_names!r}


def _context(context):
    return {{
        "function_name": context.function_name,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "invoked_function_arn": context.invoked_function_arn,
        "aws_request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }}


def record(event, context):
    document = {{"event": event, "context": _context(context), "env": {{k: os.environ.get(k) for k in ENV_NAMES}}}}
    name = uuid.uuid4().hex
    tmp = OUT / (name + ".tmp")
    tmp.write_text(json.dumps(document))
    tmp.rename(OUT / (name + ".json"))
    return document
"""

FAKE_SUBMIT = """
def lambda_handler(event, context):
    record(event, context)
    failures = []
    for item in event["Records"]:
        body = json.loads(item["body"])
        keys = [r["s3"]["object"]["key"] for r in body.get("Records", [])]
        first = item["attributes"]["ApproximateReceiveCount"] == "1"
        if first and any("raise-once" in k for k in keys):
            raise RuntimeError("fake submit failure for raise-once")
        if (first and any("fail-once" in k for k in keys)) or any("fail-always" in k for k in keys):
            failures.append({"itemIdentifier": item["messageId"]})
    return {"batchItemFailures": failures}
"""

FAKE_FINALIZE = """
def lambda_handler(event, context):
    record(event, context)
    failures = []
    for item in event["Records"]:
        job = item["dynamodb"]["Keys"]["jobId"]["S"]
        marker = OUT / ("failed-" + job)
        if job.startswith("fail-always") or (job.startswith("fail-once") and not marker.exists()):
            marker.touch()
            failures.append({"itemIdentifier": item["dynamodb"]["SequenceNumber"]})
    return {"batchItemFailures": failures}
"""

FAKE_CALLBACK = """
def lambda_handler(event, context):
    document = record(event, context)
    provider = event["pathParameters"]["provider"]
    if provider == "boom":
        raise RuntimeError("fake callback failure")
    if provider == "plain":
        return {"plain": True}
    return {
        "statusCode": 202,
        "headers": {"content-type": "application/json", "x-fake": "yes"},
        "cookies": ["session=1; Path=/"],
        "body": json.dumps(document),
    }
"""


@dataclass
class Stack:
    info: dict[str, Any]
    workdir: Path
    out: dict[str, Path]
    s3: Any
    sqs: Any
    dynamodb: Any
    api: httpx.Client

    def invocations(self, function: str) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.out[function].glob("*.json")):
            found.append(json.loads(path.read_text()))
        return found

    def sqs_records(self, key: str) -> list[dict[str, Any]]:
        """Every SQS record delivered to submit whose S3 notification names ``key``."""
        found = []
        for invocation in self.invocations("submit"):
            for item in invocation["event"]["Records"]:
                body = json.loads(item["body"])
                if any(unquote_plus(r["s3"]["object"]["key"]) == key for r in body.get("Records", [])):
                    found.append({**item, "_invocation": invocation})
        return found

    def stream_records(self, job_id: str) -> list[dict[str, Any]]:
        found = []
        for invocation in self.invocations("finalize"):
            for item in invocation["event"]["Records"]:
                if item["dynamodb"]["Keys"]["jobId"]["S"] == job_id:
                    found.append(item)
        return sorted(found, key=lambda item: int(item["dynamodb"]["SequenceNumber"]))

    def put(self, key: str, body: bytes = b"{}") -> None:
        self.s3.put_object(Bucket=self.info["input_bucket"], Key=key, Body=body)

    def queue_drained(self, url: str) -> bool:
        attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])[
            "Attributes"
        ]
        return attributes["ApproximateNumberOfMessages"] == "0" and attributes["ApproximateNumberOfMessagesNotVisible"] == "0"

    def take_from(self, url: str, needle: str) -> dict[str, Any] | None:
        """Receive (and delete) the message of queue ``url`` whose body contains ``needle``."""
        messages = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        for message in messages:
            if needle in message["Body"]:
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                document: dict[str, Any] = json.loads(message["Body"])
                return document
            self.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
        return None

    def set_status(self, job_id: str, status: str) -> None:
        self.dynamodb.put_item(
            TableName=self.info["jobs_table"],
            Item={"jobId": {"S": job_id}, "status": {"S": status}, "updatedAt": {"S": datetime.now(UTC).isoformat()}},
        )


def write_fakes(root: Path) -> dict[str, Path]:
    handlers = {}
    for name, body in (("submit", FAKE_SUBMIT), ("finalize", FAKE_FINALIZE), ("callback", FAKE_CALLBACK)):
        out = root / f"{name}-events"
        out.mkdir()
        path = root / f"fake_{name}.py"
        path.write_text(_RECORDER.format(out=str(out), env_names=ENV_NAMES) + textwrap.dedent(body))
        handlers[name] = path
    return handlers


def port_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) != 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("local-stack")
    handlers = write_fakes(root)
    workdir = root / "work"
    args = ["--no-simulator", "--sqs-time-scale", "0.002", "--stream-retry-backoff", "0.05", "--stream-max-retries", "2"]
    for name, path in handlers.items():
        args += ["--handler", f"{name}={path}"]
    process, info = spawn(workdir, *args, timeout=60)
    try:
        with httpx.Client(base_url=info["api_url"], timeout=30) as api:
            yield Stack(
                info=info,
                workdir=workdir,
                out={name: root / f"{name}-events" for name in handlers},
                s3=aws_client("s3", info),
                sqs=aws_client("sqs", info),
                dynamodb=aws_client("dynamodb", info),
                api=api,
            )
    finally:
        assert terminate(process) == 0, (workdir / "stack.log").read_text()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


# ------------------------------------------------------------------------------ stack.json


def test_stack_json_has_the_contract_fields(stack: Stack) -> None:
    info = read_stack_info(stack.workdir)
    assert info == stack.info
    assert info["region"] == "us-east-1"
    assert (info["input_bucket"], info["input_prefix"], info["output_bucket"]) == ("aleph-input", "incoming/", "aleph-output")
    assert (info["jobs_table"], info["secret_id"]) == ("aleph-jobs", "aleph/provider-keys")
    assert info["s3_endpoint"].startswith("http://127.0.0.1:")
    assert info["api_url"].startswith("http://127.0.0.1:")
    assert info["submit_queue_url"].endswith("/aleph-submit")
    assert info["simulator_url"] is None
    secret = aws_client("secretsmanager", info).get_secret_value(SecretId=info["secret_id"])
    assert json.loads(secret["SecretString"]) == {p: f"sim-{p}-key" for p in LOCAL_PROVIDERS}


def test_without_aws_faults_nothing_is_injected_or_reported(stack: Stack) -> None:
    assert stack.info["aws_faults_report"] is None
    assert not (stack.workdir / "aws-faults.json").exists()


def test_a_bad_aws_faults_option_stops_the_stack_naming_the_field(tmp_path: Path) -> None:
    rules = json.dumps({"rules": [{"fault": "kill", "rate": 0.1, "functions": ["no-such-function"]}]})
    with pytest.raises(RuntimeError, match=r"rules name unknown function\(s\) no-such-function"):
        spawn(tmp_path / "work", "--no-simulator", "--aws-faults", rules, timeout=60)


def test_resources_are_provisioned_as_the_contract_says(stack: Stack) -> None:
    table = stack.dynamodb.describe_table(TableName="aleph-jobs")["Table"]
    assert table["KeySchema"] == [{"AttributeName": "jobId", "KeyType": "HASH"}]
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    (gsi,) = table["GlobalSecondaryIndexes"]
    assert gsi["IndexName"] == "by-status"
    assert gsi["KeySchema"] == [{"AttributeName": "status", "KeyType": "HASH"}, {"AttributeName": "updatedAt", "KeyType": "RANGE"}]
    assert gsi["Projection"] == {"ProjectionType": "ALL"}
    attributes = stack.sqs.get_queue_attributes(QueueUrl=stack.info["submit_queue_url"], AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["maxReceiveCount"] == 5
    assert redrive["deadLetterTargetArn"].endswith(":aleph-submit-dlq")
    notification = stack.s3.get_bucket_notification_configuration(Bucket="aleph-input")
    (queue_config,) = notification["QueueConfigurations"]
    assert queue_config["QueueArn"].endswith(":aleph-submit")
    assert queue_config["Events"] == ["s3:ObjectCreated:*"]
    assert queue_config["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "incoming/"}]
    stack.sqs.get_queue_url(QueueName="aleph-finalize-dlq")
    stack.s3.head_bucket(Bucket="aleph-output")


# ------------------------------------------------------------------------- SQS -> submit


def test_object_under_the_prefix_reaches_submit_as_an_sqs_event(stack: Stack, unique: str) -> None:
    key = f"incoming/team a/clip {unique}+1.json"
    stack.put(key)
    (record,) = wait_for(lambda: stack.sqs_records(key), WAIT, message=f"an SQS record for {key}")
    invocation = record.pop("_invocation")
    assert set(record) == {
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    }
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == "arn:aws:sqs:us-east-1:123456789012:aleph-submit"
    assert record["awsRegion"] == "us-east-1"
    assert record["messageAttributes"] == {}
    assert record["md5OfBody"] == hashlib.md5(record["body"].encode(), usedforsecurity=False).hexdigest()
    assert {"ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp"} <= set(record["attributes"])
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert all(isinstance(v, str) for v in record["attributes"].values())

    (s3_record,) = json.loads(record["body"])["Records"]
    assert s3_record["eventSource"] == "aws:s3"
    assert s3_record["eventName"].startswith("ObjectCreated:")
    assert s3_record["s3"]["bucket"]["name"] == "aleph-input"
    raw_key = s3_record["s3"]["object"]["key"]
    assert raw_key == quote_plus(key)  # moto encodes "/" too (S3 keeps it): unquote_plus reads both
    assert " " not in raw_key
    assert raw_key.endswith("%2B1.json")  # the key's own "+" is encoded; a space becomes "+"
    assert unquote_plus(raw_key) == key

    context = invocation["context"]
    assert context["function_name"] == "aleph-submit"
    assert context["invoked_function_arn"] == "arn:aws:lambda:us-east-1:123456789012:function:aleph-submit"
    assert context["memory_limit_in_mb"] == "512"
    assert 0 < context["remaining_ms"] <= 120_000  # the submit function's timeout
    uuid.UUID(context["aws_request_id"])


def test_handler_environment_is_the_contracts(stack: Stack, unique: str) -> None:
    key = f"incoming/env-{unique}.json"
    stack.put(key)
    (record,) = wait_for(lambda: stack.sqs_records(key), WAIT, message=f"an SQS record for {key}")
    env = record["_invocation"]["env"]
    info = stack.info
    assert env["AWS_ENDPOINT_URL"] == info["s3_endpoint"]
    assert env["CALLBACK_API_URL"] == info["api_url"]
    assert (env["JOBS_TABLE_NAME"], env["INPUT_BUCKET_NAME"], env["OUTPUT_BUCKET_NAME"]) == ("aleph-jobs", "aleph-input", "aleph-output")
    assert (env["INPUT_PREFIX"], env["DEFAULT_PROVIDER"], env["PROVIDER_SECRET_ID"]) == ("incoming/", "kie", "aleph/provider-keys")
    assert env["ALLOW_HTTP_RESULT_URLS"] == "true"
    assert json.loads(env["RESULT_HOSTS"]) == {p: ["127.0.0.1"] for p in LOCAL_PROVIDERS}
    assert set(json.loads(env["PROVIDER_ENDPOINTS"])) == set(LOCAL_PROVIDERS) == set(PROVIDER_IDS)
    assert (env["PRESIGNED_URL_TTL_SECONDS"], env["PAIRING_TIMEOUT_SECONDS"], env["JOB_DEADLINE_SECONDS"]) == ("3600", "3600", "86400")
    assert env["MAX_RESULT_BYTES"] == "2147483648"
    assert (env["POWERTOOLS_SERVICE_NAME"], env["POWERTOOLS_METRICS_NAMESPACE"]) == ("aleph-pipeline", "AlephPipeline")
    assert (env["AWS_DEFAULT_REGION"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("us-east-1", "testing", "testing")
    assert env["AWS_SESSION_TOKEN"] is None  # the test runner's is not passed on
    assert info["handler_env"]["AWS_ENDPOINT_URL"] == info["s3_endpoint"]


def test_object_outside_the_prefix_does_not_arrive(stack: Stack, unique: str) -> None:
    outside = [f"other/{unique}.json", f"incoming{unique}.json", f"Incoming/{unique}.json"]
    for key in outside:
        stack.put(key)
    marker = f"incoming/marker-{unique}.json"
    stack.put(marker)  # S3 notifies synchronously: by now every message of these puts is queued
    wait_for(lambda: stack.sqs_records(marker), WAIT, message="the marker's record")
    wait_for(lambda: stack.queue_drained(stack.info["submit_queue_url"]), WAIT, message="an empty submit queue")
    assert all(stack.sqs_records(key) == [] for key in outside)


def test_batch_item_failure_is_redelivered_then_deleted(stack: Stack, unique: str) -> None:
    key = f"incoming/fail-once-{unique}.json"
    stack.put(key)
    records = wait_for(lambda: [r for r in stack.sqs_records(key) if r["attributes"]["ApproximateReceiveCount"] == "2"] and stack.sqs_records(key), WAIT)
    assert len({r["messageId"] for r in records}) == 1
    assert sorted(r["attributes"]["ApproximateReceiveCount"] for r in records) == ["1", "2"]
    wait_for(lambda: stack.queue_drained(stack.info["submit_queue_url"]), WAIT, message="the message deleted")
    assert len(stack.sqs_records(key)) == 2


def test_handler_exception_redelivers_the_batch_and_is_logged(stack: Stack, unique: str) -> None:
    key = f"incoming/raise-once-{unique}.json"
    stack.put(key)
    records = wait_for(lambda: len(stack.sqs_records(key)) >= 2 and stack.sqs_records(key), WAIT, message="a redelivery")
    assert sorted(r["attributes"]["ApproximateReceiveCount"] for r in records)[:2] == ["1", "2"]

    def logged() -> str | None:
        text = (stack.workdir / "stack.log").read_text()
        return text if "fake submit failure" in text else None

    log = wait_for(logged, WAIT, message="the traceback in the stack's log")
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: fake submit failure for raise-once" in log


def test_message_failing_every_time_ends_in_the_dlq(stack: Stack, unique: str) -> None:
    key = f"incoming/fail-always-{unique}.json"
    stack.put(key)
    dlq = stack.sqs.get_queue_url(QueueName="aleph-submit-dlq")["QueueUrl"]
    body = wait_for(lambda: stack.take_from(dlq, quote_plus(key)), WAIT, message="the message in the DLQ")
    assert unquote_plus(body["Records"][0]["s3"]["object"]["key"]) == key
    assert len(stack.sqs_records(key)) == 5  # maxReceiveCount


# ---------------------------------------------------------------- stream -> finalize


def test_status_succeeded_reaches_finalize_in_the_stream_shape(stack: Stack, unique: str) -> None:
    job = f"job-{unique}"
    for status in ("RECEIVED", "SUBMITTED", "SUCCEEDED"):
        stack.set_status(job, status)
    (record,) = wait_for(lambda: stack.stream_records(job), WAIT, message=f"a stream record for {job}")
    stream_arn = stack.dynamodb.describe_table(TableName="aleph-jobs")["Table"]["LatestStreamArn"]
    assert set(record) == {"eventID", "eventName", "eventVersion", "eventSource", "awsRegion", "dynamodb", "eventSourceARN"}
    assert (record["eventName"], record["eventVersion"], record["eventSource"]) == ("MODIFY", "1.1", "aws:dynamodb")
    assert (record["awsRegion"], record["eventSourceARN"]) == ("us-east-1", stream_arn)
    dynamodb = record["dynamodb"]
    assert set(dynamodb) == {"ApproximateCreationDateTime", "Keys", "NewImage", "OldImage", "SequenceNumber", "SizeBytes", "StreamViewType"}
    assert dynamodb["Keys"] == {"jobId": {"S": job}}
    assert dynamodb["NewImage"]["status"] == {"S": "SUCCEEDED"}
    assert dynamodb["OldImage"]["status"] == {"S": "SUBMITTED"}
    assert dynamodb["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert isinstance(dynamodb["ApproximateCreationDateTime"], int)
    assert isinstance(dynamodb["SizeBytes"], int) and dynamodb["SequenceNumber"].isdigit()

    # Other statuses never arrive: records of one item are delivered in order, so once the
    # second SUCCEEDED is in, a matching COMPLETED would have been delivered before it.
    stack.set_status(job, "COMPLETED")
    stack.set_status(job, "SUCCEEDED")
    records = wait_for(lambda: len(stack.stream_records(job)) == 2 and stack.stream_records(job), WAIT)
    assert [r["dynamodb"]["OldImage"]["status"]["S"] for r in records] == ["SUBMITTED", "COMPLETED"]
    invocation = stack.invocations("finalize")[0]["context"]
    assert invocation["function_name"] == "aleph-finalize" and invocation["memory_limit_in_mb"] == "1024"


def test_insert_with_succeeded_matches(stack: Stack, unique: str) -> None:
    job = f"job-{unique}"
    stack.set_status(job, "SUCCEEDED")
    (record,) = wait_for(lambda: stack.stream_records(job), WAIT)
    assert record["eventName"] == "INSERT"
    assert "OldImage" not in record["dynamodb"]


def test_stream_failure_is_retried_from_the_failed_record(stack: Stack, unique: str) -> None:
    job = f"fail-once-{unique}"
    stack.set_status(job, "SUCCEEDED")
    records = wait_for(lambda: len(stack.stream_records(job)) == 2 and stack.stream_records(job), WAIT)
    assert records[0]["dynamodb"]["SequenceNumber"] == records[1]["dynamodb"]["SequenceNumber"]


def test_stream_failure_after_the_retries_goes_to_the_on_failure_queue(stack: Stack, unique: str) -> None:
    job = f"fail-always-{unique}"
    stack.set_status(job, "SUCCEEDED")
    (first,) = wait_for(lambda: stack.stream_records(job)[:1], WAIT)
    sequence = first["dynamodb"]["SequenceNumber"]
    message = wait_for(lambda: stack.take_from(stack.info["finalize_dlq_url"], sequence), WAIT, message="the on-failure record")
    assert len(stack.stream_records(job)) == 3  # the first try and --stream-max-retries 2
    assert message["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert message["requestContext"]["functionArn"].endswith(":function:aleph-finalize")
    assert message["version"] == "1.0"
    info = message["DDBStreamBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (sequence, sequence, 1)
    assert info["streamArn"] == first["eventSourceARN"]


# ------------------------------------------------------------------- HTTP API -> callback


def test_post_arrives_as_a_v2_event_and_the_status_code_comes_back(stack: Stack) -> None:
    response = stack.api.post(
        "/callbacks/kie/job-1?token=abc&x=1&x=2&empty=",
        json={"code": 200, "data": {"taskId": "t-1"}},
        headers=[("X-Dup", "a"), ("X-Dup", "b"), ("Cookie", "c1=v1; c2=v2"), ("User-Agent", "kie-test")],
    )
    assert response.status_code == 202
    assert response.headers["x-fake"] == "yes"
    assert response.headers["set-cookie"] == "session=1; Path=/"
    event = response.json()["event"]
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /callbacks/{provider}/{jobId}"
    assert event["rawPath"] == "/callbacks/kie/job-1"
    assert event["rawQueryString"] == "token=abc&x=1&x=2&empty="
    assert event["queryStringParameters"] == {"token": "abc", "x": "1,2", "empty": ""}
    assert event["pathParameters"] == {"provider": "kie", "jobId": "job-1"}
    assert event["cookies"] == ["c1=v1", "c2=v2"]
    assert event["headers"]["x-dup"] == "a,b"
    assert event["headers"]["content-type"] == "application/json"
    assert "cookie" not in event["headers"]
    assert all(name == name.lower() for name in event["headers"])
    assert json.loads(event["body"]) == {"code": 200, "data": {"taskId": "t-1"}}
    assert event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert {"accountId", "apiId", "domainName", "domainPrefix", "http", "requestId", "routeKey", "stage", "time", "timeEpoch"} <= set(context)
    assert context["http"] == {"method": "POST", "path": "/callbacks/kie/job-1", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "kie-test"}
    assert (context["stage"], context["routeKey"]) == ("$default", "POST /callbacks/{provider}/{jobId}")
    assert response.headers["apigw-requestid"] == context["requestId"]
    assert response.json()["context"]["function_name"] == "aleph-callback"


def test_binary_bodies_are_base64_and_path_parameters_decoded(stack: Stack) -> None:
    payload = bytes(range(256))
    response = stack.api.post("/callbacks/apikley/job%20x", content=payload, headers={"content-type": "application/octet-stream"})
    event = response.json()["event"]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload
    assert event["pathParameters"] == {"provider": "apikley", "jobId": "job x"}
    assert event["rawPath"] == "/callbacks/apikley/job%20x"
    assert "queryStringParameters" not in event and event["rawQueryString"] == ""


def test_answer_without_status_code_is_a_200_json(stack: Stack) -> None:
    response = stack.api.post("/callbacks/plain/job-1", json={})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"plain": True}


def test_unknown_routes_are_404(stack: Stack) -> None:
    for method, path in (("POST", "/nope"), ("GET", "/callbacks/kie/job-1"), ("POST", "/callbacks/kie"), ("POST", "/callbacks/kie/job-1/more")):
        response = stack.api.request(method, path)
        assert (response.status_code, response.json()) == (404, {"message": "Not Found"}), (method, path)


def test_failing_handler_is_a_500_and_the_stack_keeps_serving(stack: Stack) -> None:
    response = stack.api.post("/callbacks/boom/job-1", json={})
    assert (response.status_code, response.json()) == (500, {"message": "Internal Server Error"})
    assert stack.api.post("/callbacks/kie/job-2", json={}).status_code == 202


def test_body_over_10_mb_is_413(stack: Stack) -> None:
    response = stack.api.post("/callbacks/kie/job-1", content=b"x" * (10 * 1024 * 1024 + 1), headers={"content-type": "text/plain"})
    assert response.status_code == 413


# ------------------------------------------------------------------- lifecycle (own stack)


def test_spawned_stack_with_the_real_simulator_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    has_simulator = (REPO_ROOT / "local" / "simulator" / "__main__.py").is_file()
    args = ["--handler", f"submit={tmp_path / 'missing.py'}"] + ([] if has_simulator else ["--no-simulator"])
    process, info = spawn(tmp_path / "work", *args, timeout=60)
    try:
        assert process.poll() is None
        if has_simulator:
            assert httpx.get(f"{info['simulator_url']}/_sim/tasks", timeout=10).status_code == 200
            endpoints = json.loads(info["handler_env"]["PROVIDER_ENDPOINTS"])
            assert endpoints == {p: f"{info['simulator_url']}/{p}" for p in LOCAL_PROVIDERS}
    finally:
        code = terminate(process)
    log = (tmp_path / "work" / "stack.log").read_text()
    assert code == 0, log
    assert "missing.py not found" in log  # a missing handler is reported, the rest runs
    assert port_closed(info["s3_endpoint"]) and port_closed(info["api_url"])
    if has_simulator:
        assert port_closed(info["simulator_url"])
    assert not (tmp_path / "work" / "stack.json").exists()


def test_spawn_reports_a_stack_that_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with code"):
        spawn(tmp_path / "work", "--no-such-option", timeout=30)


# ------------------------------------------------------------------------------ unit tests


SUCCEEDED_RECORD = {
    "eventName": "MODIFY",
    "dynamodb": {"NewImage": {"status": {"S": "SUCCEEDED"}, "jobId": {"S": "j"}}, "OldImage": {"status": {"S": "SUBMITTED"}}},
}


@pytest.mark.parametrize(
    ("event_name", "status", "expected"),
    [
        ("MODIFY", "SUCCEEDED", True),
        ("INSERT", "SUCCEEDED", True),
        ("REMOVE", "SUCCEEDED", False),
        ("MODIFY", "COMPLETED", False),
        ("MODIFY", "succeeded", False),
    ],
)
def test_contract_filter(event_name: str, status: str, expected: bool) -> None:
    record = {"eventName": event_name, "dynamodb": {"NewImage": {"status": {"S": status}}}}
    assert matches(CONTRACT_FINALIZE_FILTER, record) is expected


def test_filter_needs_the_nested_fields() -> None:
    assert not matches(CONTRACT_FINALIZE_FILTER, {"eventName": "REMOVE", "dynamodb": {"OldImage": {"status": {"S": "SUCCEEDED"}}}})
    assert not matches(CONTRACT_FINALIZE_FILTER, {"eventName": "MODIFY", "dynamodb": {"NewImage": {"status": {"N": "1"}}}})
    assert not matches(CONTRACT_FINALIZE_FILTER, {"eventName": "MODIFY", "dynamodb": {"NewImage": "SUCCEEDED"}})
    assert not matches(CONTRACT_FINALIZE_FILTER, {"dynamodb": {"NewImage": {"status": {"S": "SUCCEEDED"}}}})
    assert matches(CONTRACT_FINALIZE_FILTER, SUCCEEDED_RECORD)


def test_filter_operators() -> None:
    record = {"a": "prefix-value", "n": 5, "b": True, "z": None, "list": ["x", "y"], "obj": {"k": "v"}}
    assert matches({"a": [{"prefix": "prefix-"}]}, record)
    assert matches({"a": [{"suffix": "-value"}]}, record)
    assert matches({"a": [{"equals-ignore-case": "PREFIX-VALUE"}]}, record)
    assert matches({"a": [{"anything-but": ["other"]}]}, record)
    assert not matches({"a": [{"anything-but": "prefix-value"}]}, record)
    assert not matches({"a": [{"anything-but": {"prefix": "prefix"}}]}, record)
    assert matches({"n": [{"numeric": [">", 1, "<=", 5]}]}, record)
    assert not matches({"n": [{"numeric": ["<", 5]}]}, record)
    assert matches({"n": [5.0]}, record) and not matches({"n": ["5"]}, record)
    assert matches({"b": [True]}, record) and not matches({"b": [1]}, record)
    assert matches({"z": [None]}, record)
    assert matches({"list": ["y"]}, record) and not matches({"list": ["w"]}, record)
    assert matches({"missing": [{"exists": False}]}, record) and not matches({"missing": [{"exists": True}]}, record)
    assert matches({"a": [{"exists": True}]}, record)
    assert not matches({"missing": ["x"]}, record)
    assert matches({"obj": {"k": ["v"]}}, record)
    assert not matches({"a": []}, record)
    assert matches({}, record)


def test_filter_criteria_are_an_or() -> None:
    assert matches_any([], {"anything": 1})
    assert matches_any([{"a": ["1"]}, {"a": ["2"]}], {"a": "2"})
    assert not matches_any([{"a": ["1"]}, {"a": ["2"]}], {"a": "3"})


@pytest.mark.parametrize(
    "pattern",
    ['["not", "an object"]', '{"a": "scalar"}', '{"a": [{"wildcard": "*"}]}', '{"a": [{"numeric": [">"]}]}', '{"a": [{"exists": "yes"}]}', '{"a": [[1]]}'],
)
def test_invalid_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        load_pattern(pattern)


def test_template_filter_and_settings_are_read_from_template_yaml() -> None:
    template = REPO_ROOT / "template.yaml"
    if not template.is_file():
        pytest.skip("template.yaml not written yet")
    config = load_template_config(template)
    finalize, submit, callback = config.functions["finalize"], config.functions["submit"], config.functions["callback"]
    assert finalize.stream is not None and submit.sqs is not None
    assert [load_pattern(p) for p in finalize.stream.filters] == [CONTRACT_FINALIZE_FILTER]
    assert (finalize.stream.batch_size, finalize.stream.maximum_retry_attempts, finalize.stream.bisect_on_error) == (5, 10, True)
    assert finalize.stream.report_batch_item_failures and submit.sqs.report_batch_item_failures
    assert (submit.sqs.batch_size, submit.sqs.maximum_concurrency) == (3, 5)
    assert [(r.method, r.path) for r in callback.routes] == [("POST", "/callbacks/{provider}/{jobId}")]
    assert config.input_prefix == "incoming/"
    assert config.submit_queue.max_receive_count == 5
    assert config.jobs_table is not None and config.jobs_table["GlobalSecondaryIndexes"][0]["IndexName"] == "by-status"


def test_each_function_gets_only_its_own_environment_and_routes_their_auth() -> None:
    config = load_template_config(REPO_ROOT / "template.yaml")
    refs = {"CallbackApi": "api1", "AWS::Region": "us-east-1", "AWS::URLSuffix": "amazonaws.com", "SubmitDeadLetterQueue": "q"}
    submit, _ = config.resolve_environment("submit", refs)
    finalize, _ = config.resolve_environment("finalize", refs)
    assert submit["CALLBACK_API_URL"] == "https://api1.execute-api.us-east-1.amazonaws.com"
    assert "CALLBACK_API_URL" not in finalize and "SUBMIT_DEAD_LETTER_QUEUE_URL" not in submit
    assert submit["POWERTOOLS_SERVICE_NAME"] == finalize["POWERTOOLS_SERVICE_NAME"] == "aleph-pipeline"  # Globals
    assert [r.authorizer for r in config.functions["status"].routes] == ["AWS_IAM"]
    assert [r.authorizer for r in config.functions["callback"].routes] == [None]


def test_missing_template_falls_back_to_the_contract(tmp_path: Path) -> None:
    config = load_template_config(tmp_path / "template.yaml")
    assert config.source is None and config.warnings
    finalize = config.functions["finalize"]
    assert finalize.stream is not None and list(finalize.stream.filters) == [CONTRACT_FINALIZE_FILTER]
    assert [(r.method, r.path) for r in config.functions["callback"].routes] == [("POST", "/callbacks/{provider}/{jobId}")]


def test_parse_rate() -> None:
    assert parse_rate("rate(5 minutes)") == 300
    assert parse_rate("rate(1 hour)") == 3600
    assert parse_rate("cron(0 12 * * ? *)") is None


def test_route_matching() -> None:
    routes = [Route("POST", "/callbacks/{provider}/{jobId}"), Route("ANY", "/files/{path+}"), Route("GET", "/callbacks/kie/status")]
    assert find_route(routes, "POST", "/callbacks/kie/j1") == (routes[0], {"provider": "kie", "jobId": "j1"})
    assert find_route(routes, "DELETE", "/files/a/b%20c") == (routes[1], {"path": "a/b c"})
    assert find_route(routes, "GET", "/callbacks/kie/status") == (routes[2], {})
    assert find_route(routes, "POST", "/callbacks/kie/j1/") is None
    assert find_route(routes, "POST", "/callbacks//j1") is None
    assert find_route(routes, "GET", "/files") is None


def test_text_content_types() -> None:
    assert is_text_content("application/json; charset=utf-8")
    assert is_text_content("text/plain") and is_text_content("application/vnd.api+json")
    assert not is_text_content("application/octet-stream")
    assert not is_text_content("application/x-www-form-urlencoded")
    assert not is_text_content(None)


def test_http_event_without_query_cookies_or_body() -> None:
    event = build_http_event(
        route_key="POST /x",
        method="POST",
        raw_path="/x",
        raw_query="",
        headers=[("Host", "127.0.0.1:8080")],
        body=b"",
        source_ip="127.0.0.1",
        path_parameters={},
    )
    assert "cookies" not in event and "queryStringParameters" not in event
    assert "pathParameters" not in event and "body" not in event
    assert event["isBase64Encoded"] is False
    assert event["requestContext"]["domainName"] == "127.0.0.1"
    assert event["headers"] == {"host": "127.0.0.1:8080"}


def test_http_response_rules() -> None:
    assert http_response({"statusCode": 401}) == (401, [], b"")
    status, _headers, body = http_response({"statusCode": 200, "body": base64.b64encode(b"\x00\x01").decode(), "isBase64Encoded": True})
    assert (status, body) == (200, b"\x00\x01")
    assert http_response(["a"]) == (200, [("Content-Type", "application/json")], b'["a"]')
    assert http_response({"statusCode": 204, "cookies": ["a=1"]})[1] == [("Set-Cookie", "a=1")]


def test_batch_item_failure_rules() -> None:
    ids = ["m1", "m2"]
    assert failed_item_ids(None, ids) == set()
    assert failed_item_ids({}, ids) == set()
    assert failed_item_ids({"batchItemFailures": []}, ids) == set()
    assert failed_item_ids({"batchItemFailures": None}, ids) == set()
    assert failed_item_ids({"batchItemFailures": [{"itemIdentifier": "m2"}]}, ids) == {"m2"}
    for bad in ([{"itemIdentifier": ""}], [{"itemIdentifier": None}], [{"id": "m1"}], [{"itemIdentifier": "m9"}], "m1"):
        assert failed_item_ids({"batchItemFailures": bad}, ids) == set(ids)


def test_event_builders_keep_lambda_shapes() -> None:
    sqs_event = build_sqs_event(
        [
            {
                "MessageId": "m",
                "ReceiptHandle": "r",
                "Body": "b",
                "MD5OfBody": "x",
                "Attributes": {"ApproximateReceiveCount": "1", "Other": "no"},
                "MessageAttributes": {"a": {"DataType": "Binary", "BinaryValue": b"\x01"}},
            }
        ],
        "arn:aws:sqs:us-east-1:123456789012:q",
        "us-east-1",
    )
    (record,) = sqs_event["Records"]
    assert record["attributes"] == {"ApproximateReceiveCount": "1"}
    assert record["messageAttributes"] == {"a": {"stringListValues": [], "binaryListValues": [], "dataType": "Binary", "binaryValue": "AQ=="}}
    stream_record = build_stream_record(
        {
            "eventID": "e",
            "eventName": "INSERT",
            "dynamodb": {
                "ApproximateCreationDateTime": datetime(2026, 1, 1, tzinfo=UTC),
                "Keys": {"jobId": {"S": "j"}},
                "NewImage": {"blob": {"B": b"\x00"}, "m": {"M": {"bs": {"BS": [b"\x01"]}}}},
                "SequenceNumber": "1",
                "SizeBytes": 3,
                "StreamViewType": "NEW_AND_OLD_IMAGES",
            },
        },
        "arn:stream",
        "us-east-1",
    )
    assert stream_record["dynamodb"]["ApproximateCreationDateTime"] == 1767225600
    assert stream_record["dynamodb"]["NewImage"] == {"blob": {"B": "AA=="}, "m": {"M": {"bs": {"BS": ["AQ=="]}}}}
    assert stream_record["eventVersion"] == "1.1" and stream_record["eventSourceARN"] == "arn:stream"


def test_wait_for_is_bounded() -> None:
    with pytest.raises(TimeoutError, match="never"):
        wait_for(lambda: None, timeout=0.2, interval=0.05, message="never")
    assert wait_for(lambda: 7, timeout=1) == 7


_STARTED: list[LambdaFunction] = []


def _function(tmp_path: Path, name: str, source: str, **kwargs: Any) -> LambdaFunction:
    """A function (its own process, started on first use) from ``source``; stopped after the test."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    function = LambdaFunction(name, path, **kwargs)
    _STARTED.append(function)
    return function


@pytest.fixture(autouse=True)
def _stop_functions() -> Iterator[None]:
    yield
    while _STARTED:
        _STARTED.pop().close()


class _FakeSqs:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_message(self, QueueUrl: str, MessageBody: str) -> None:
        self.sent.append(json.loads(MessageBody))


def test_stream_bisects_a_failing_batch_and_isolates_the_poison_record(tmp_path: Path) -> None:
    calls_file = tmp_path / "calls.jsonl"
    function = _function(
        tmp_path,
        "bisecting",  # (a handler file named like a standard module would hide it, as on Lambda)
        f"""
        import json

        def lambda_handler(event, context):
            jobs = [r["dynamodb"]["Keys"]["jobId"]["S"] for r in event["Records"]]
            with open({str(calls_file)!r}, "a") as calls:
                calls.write(json.dumps(jobs) + "\\n")
            if "poison" in jobs:
                raise ValueError("poison")
        """,
    )
    source = StreamEventSource(
        function,
        table_name="t",
        region="us-east-1",
        client_factory=lambda service: None,
        batch_size=5,
        bisect_on_error=True,
        maximum_retry_attempts=1,
        on_failure_queue_url="dlq",
        lanes=1,
        retry_backoff_seconds=0.01,
    )
    source.stream_arn = "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/x"
    for number, job in enumerate(["a", "b", "poison", "d", "e"]):
        raw = {"eventName": "INSERT", "dynamodb": {"Keys": {"jobId": {"S": job}}, "SequenceNumber": str(100 + number), "SizeBytes": 1}}
        source._route("shard-1", raw)
    sqs = _FakeSqs()
    source._drain(source._lanes[0], sqs)
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    delivered = [job for call in calls for job in call if "poison" not in call]
    assert delivered == ["a", "b", "d", "e"]  # in order, each once
    assert calls.count(["poison"]) == 2  # the first try alone, then one retry
    (message,) = sqs.sent
    assert message["DDBStreamBatchInfo"]["startSequenceNumber"] == "102"
    assert message["DDBStreamBatchInfo"]["batchSize"] == 1
    assert message["responseContext"]["functionError"] == "Unhandled"


def test_schedule_invokes_with_a_scheduled_event(tmp_path: Path) -> None:
    out = tmp_path / "events"
    out.mkdir()
    function = _function(
        tmp_path,
        "reconcile",
        f"""
        import json, pathlib, uuid

        def lambda_handler(event, context):
            pathlib.Path({str(out)!r}, uuid.uuid4().hex + ".json").write_text(json.dumps(event))
        """,
    )
    source = ScheduleEventSource(function, interval_seconds=0.05, region="us-east-1", rule_name="aleph-reconcile")
    source.start()
    try:
        event = json.loads(wait_for(lambda: next(iter(sorted(out.glob("*.json"))), None), 5).read_text())
    finally:
        source.stop()
        assert source.join(5) == []
    assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
    assert event["resources"] == ["arn:aws:events:us-east-1:123456789012:rule/aleph-reconcile"]


def test_lambda_function_reports_init_errors_and_bad_answers(tmp_path: Path) -> None:
    broken = _function(tmp_path, "broken", "raise ImportError('no such thing')\n")
    assert broken.warm() is False
    invocation = broken.invoke({})
    assert not invocation.ok and invocation.error is not None and "ImportModuleError" in invocation.error
    odd = _function(tmp_path, "odd", "def lambda_handler(event, context):\n    return object()\n")
    assert odd.invoke({}).error is not None
    echo = _function(
        tmp_path,
        "echo",
        "def lambda_handler(event, context):\n    return {'event': event, 'left': context.get_remaining_time_in_millis()}\n",
        timeout_seconds=3,
    )
    result = echo.invoke({"a": 1})
    assert result.ok and result.result["event"] == {"a": 1} and 0 < result.result["left"] <= 3000
