"""The least-privilege audit (local/iam_audit.py) on synthetic call logs and the real template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from local.iam_audit import AwsCall, Grant, LocalResources, Need, audit, function_grants, load_calls, needs
from tools.sam_expand import SAM_PYTHON, expand_template

ROOT = Path(__file__).resolve().parents[2]
QUEUES = "http://127.0.0.1:5000/123456789012"
INFO: dict[str, Any] = {
    "region": "us-east-1",
    "input_bucket": "aleph-input",
    "output_bucket": "aleph-output",
    "jobs_table": "aleph-jobs",
    "submit_queue_url": f"{QUEUES}/aleph-submit",
    "submit_dlq_url": f"{QUEUES}/aleph-submit-dlq",
    "finalize_dlq_url": f"{QUEUES}/aleph-finalize-dlq",
    "notify_dlq_url": f"{QUEUES}/aleph-notify-dlq",
    "undelivered_events_url": f"{QUEUES}/aleph-undelivered-job-events",
    "poll_queue_url": f"{QUEUES}/aleph-poll",
    "poll_dlq_url": f"{QUEUES}/aleph-poll-dlq",
    "pace_queue_url": f"{QUEUES}/aleph-pace",
    "secret_id": "aleph/provider-keys",
    "event_bus_name": "default",
}


@pytest.fixture(scope="module")
def local() -> LocalResources:
    return LocalResources.from_stack_info(INFO, ROOT / "template.yaml")


@pytest.fixture(scope="module")
def grants(local: LocalResources) -> dict[str, list[Grant]]:
    if not SAM_PYTHON.is_file():
        pytest.skip(f"{SAM_PYTHON} not installed (make .venv-sam/.installed)")
    return function_grants(expand_template(ROOT / "template.yaml"), local)


def call(function: str, service: str, operation: str, presigned: bool = False, **params: Any) -> AwsCall:
    return AwsCall(function, service, operation, params, presigned)


def denied(grants: dict[str, list[Grant]], local: LocalResources, *calls: AwsCall) -> list[str]:
    report = audit(grants, calls, local, check_unused=False)
    assert not report.unmapped and not report.unknown_functions
    return [f"{c.function} {need.action} {need.resource}" for c, need in report.denied]


def test_every_function_of_the_template_has_a_role(grants: dict[str, list[Grant]]) -> None:
    assert set(grants) == {"submit", "callback", "finalize", "reconcile", "notify", "status", "poll"}
    # SAM's managed policies are part of the role: logs and traces are allowed everywhere.
    assert all(any(g.managed == "AWSLambdaBasicExecutionRole" for g in found) for found in grants.values())


def test_what_each_function_does_is_allowed(grants: dict[str, list[Grant]], local: LocalResources) -> None:
    assert (
        denied(
            grants,
            local,
            call("submit", "s3", "HeadObject", Bucket="aleph-input", Key="incoming/a.json"),
            call("submit", "s3", "GetObject", presigned=True, Bucket="aleph-input", Key="incoming/a.mp4"),
            call("submit", "s3", "ListObjectsV2", Bucket="aleph-input", Prefix="incoming/"),
            call("submit", "dynamodb", "PutItem", TableName="aleph-jobs"),
            call("submit", "secretsmanager", "GetSecretValue", SecretId="aleph/provider-keys"),
            call("finalize", "s3", "CreateMultipartUpload", Bucket="aleph-output", Key="j/result.webm"),
            call("finalize", "s3", "UploadPart", Bucket="aleph-output", Key="j/result.webm"),
            call("finalize", "s3", "AbortMultipartUpload", Bucket="aleph-output", Key="j/result.webm"),
            call("reconcile", "dynamodb", "Query", TableName="aleph-jobs", IndexName="by-status"),
            call("reconcile", "sqs", "ReceiveMessage", QueueUrl=f"{QUEUES}/aleph-submit-dlq"),
            call("reconcile", "s3", "CopyObject", Bucket="aleph-output", Key="j/b", CopySource="aleph-output/j/a"),
            call("notify", "events", "PutEvents", EventBusName="default"),
            call("notify", "sqs", "SendMessage", QueueUrl=f"{QUEUES}/aleph-undelivered-job-events"),
            call("status", "s3", "GetObject", presigned=True, Bucket="aleph-output", Key="j/result.webm"),
            call("status", "sts", "GetCallerIdentity"),
        )
        == []
    )


def test_a_call_the_role_would_deny_is_caught(grants: dict[str, list[Grant]], local: LocalResources) -> None:
    assert denied(
        grants,
        local,
        call("status", "dynamodb", "PutItem", TableName="aleph-jobs"),  # status only reads
        call("submit", "s3", "ListObjectsV2", Bucket="aleph-output"),  # lists the input bucket only
        call("reconcile", "dynamodb", "Query", TableName="aleph-jobs"),  # Query only on the by-status index
        call("finalize", "s3", "CopyObject", Bucket="aleph-output", Key="j/x", CopySource={"Bucket": "aleph-input", "Key": "incoming/a.mp4"}),
        call("notify", "events", "PutEvents", EventBusName="other-bus"),
        call("callback", "secretsmanager", "GetSecretValue", SecretId="someone-elses-secret"),
        call("status", "sqs", "ReceiveMessage", QueueUrl=f"{QUEUES}/aleph-submit"),  # polling is Lambda's, not status's
    ) == [
        "status dynamodb:PutItem arn:aws:dynamodb:us-east-1:123456789012:table/aleph-jobs",
        "submit s3:ListBucket arn:aws:s3:::aleph-output",
        "reconcile dynamodb:Query arn:aws:dynamodb:us-east-1:123456789012:table/aleph-jobs",
        "finalize s3:GetObject arn:aws:s3:::aleph-input/incoming/a.mp4",
        "notify events:PutEvents arn:aws:events:us-east-1:123456789012:event-bus/other-bus",
        "callback secretsmanager:GetSecretValue arn:aws:secretsmanager:us-east-1:123456789012:secret:someone-elses-secret",
        "status sqs:ReceiveMessage arn:aws:sqs:us-east-1:123456789012:aleph-submit",
    ]


def test_an_unused_grant_is_caught_and_an_allowlisted_one_is_only_listed(grants: dict[str, list[Grant]], local: LocalResources) -> None:
    report = audit(grants, [call("status", "dynamodb", "GetItem", TableName="aleph-jobs")], local)
    unused = {(function, grant.action, grant.label) for function, grant in report.unused}
    assert ("status", "s3:GetObject", "OutputBucket/*") in unused
    assert ("status", "dynamodb:GetItem", "JobsTable") not in unused
    assert ("submit", "dynamodb:PutItem", "JobsTable") in unused
    # Allowlisted (Lambda's own on-failure delivery), so listed but not a failure.
    assert ("finalize", "sqs:SendMessage", "FinalizeDeadLetterQueue") not in unused
    assert any(grant.label == "FinalizeDeadLetterQueue" for _, grant, _ in report.unused_allowed)
    # Managed policies (logs, traces, stream polling) are never reported.
    assert not any(grant.managed for _, grant in report.unused)
    assert any("unused grant: status may s3:GetObject on OutputBucket/*" in line for line in report.failures())


def test_calls_it_cannot_map_and_unknown_functions_are_failures(grants: dict[str, list[Grant]], local: LocalResources) -> None:
    report = audit(
        grants, [call("submit", "s3", "GetObjectTagging", Bucket="aleph-input", Key="k"), call("ghost", "s3", "GetObject")], local, check_unused=False
    )
    assert [str(c) for c in report.unmapped] == ["submit: s3.GetObjectTagging(Bucket=aleph-input, Key=k)"]
    assert report.unknown_functions == ["ghost"]
    assert len(report.failures()) == 2


def test_iam_actions_of_s3_and_dynamodb_calls(local: LocalResources) -> None:
    def actions(c: AwsCall) -> list[tuple[str, str]]:
        found = needs(c, local)
        assert found is not None
        return [(n.action, n.resource) for n in found]

    assert actions(call("f", "s3", "HeadObject", Bucket="b", Key="k")) == [("s3:GetObject", "arn:aws:s3:::b/k")]
    assert actions(call("f", "s3", "CompleteMultipartUpload", Bucket="b", Key="k")) == [("s3:PutObject", "arn:aws:s3:::b/k")]
    assert actions(call("f", "s3", "CopyObject", Bucket="t", Key="k2", CopySource="/s/a%20b.mp4?versionId=1")) == [
        ("s3:GetObject", "arn:aws:s3:::s/a b.mp4"),
        ("s3:PutObject", "arn:aws:s3:::t/k2"),
    ]
    assert actions(call("f", "s3", "ListObjectsV2", Bucket="b", Prefix="p/")) == [("s3:ListBucket", "arn:aws:s3:::b")]
    assert actions(call("f", "dynamodb", "Query", TableName="t", IndexName="i")) == [
        ("dynamodb:Query", "arn:aws:dynamodb:us-east-1:123456789012:table/t/index/i")
    ]
    assert actions(call("f", "sqs", "DeleteMessageBatch", QueueUrl=f"{QUEUES}/q")) == [("sqs:DeleteMessage", "arn:aws:sqs:us-east-1:123456789012:q")]
    assert actions(call("f", "events", "PutEvents")) == [("events:PutEvents", "arn:aws:events:us-east-1:123456789012:event-bus/default")]


def test_grant_wildcards_follow_iam() -> None:
    grant = Grant("sqs:SendMessage*", "arn:aws:s3:::b/*", "B/*")
    assert grant.allows(Need("SQS:sendmessagebatch", "arn:aws:s3:::b/a/b"))  # actions ignore case; * spans "/"
    assert not grant.allows(Need("sqs:SendMessage", "arn:aws:s3:::b"))
    assert Grant("s3:GetObject", "arn:aws:s3:::b/?", "B").allows(Need("s3:GetObject", "arn:aws:s3:::b/k"))
    assert not Grant("s3:GetObject", "arn:aws:s3:::b/?", "B").allows(Need("s3:GetObject", "arn:aws:s3:::b/kk"))
    assert not Grant("s3:GetObject", "arn:aws:s3:::B/*", "B").allows(Need("s3:GetObject", "arn:aws:s3:::b/k"))  # resources do not


def test_the_call_log_is_read_line_by_line(tmp_path: Path) -> None:
    log = tmp_path / "aws-calls.jsonl"
    record = {"function": "submit", "service": "s3", "operation": "GetObject", "params": {"Bucket": "b", "Key": "k"}, "presigned": False}
    log.write_text(json.dumps(record) + "\n\n" + json.dumps({**record, "presigned": True}) + "\n", encoding="utf-8")
    assert [c.presigned for c in load_calls(log)] == [False, True]
    log.write_text('{"function": "submit"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"aws-calls.jsonl:1"):
        load_calls(log)
