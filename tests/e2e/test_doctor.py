"""``aleph doctor`` against a local stack of its own: all ok, then each broken thing reported."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from aleph_cli.main import main
from tests.e2e.conftest import Stack, open_stack

OLD = "2020-01-01T00:00:00.000Z"


@pytest.fixture(scope="module")
def doctor_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Its own stack: the breakage these tests cause must not reach other e2e tests.
    with open_stack(tmp_path_factory.mktemp("doctor")) as opened:
        yield opened


def doctor(stack: Stack, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, str]]:
    """The exit code and each check's line by its name."""
    capsys.readouterr()
    code = main(["--local", str(stack.workdir), "doctor"])
    out = capsys.readouterr().out
    lines = {}
    for line in out.splitlines():
        name = line[6:].partition(":")[0]
        lines[name] = line
    return code, lines


def secrets(stack: Stack) -> Any:
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=stack.info["region"])
    return session.client("secretsmanager", endpoint_url=stack.info["s3_endpoint"])


def test_a_healthy_stack_is_all_ok(doctor_stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = doctor(doctor_stack, capsys)
    assert code == 0, lines
    secret = json.loads(secrets(doctor_stack).get_secret_value(SecretId=doctor_stack.info["secret_id"])["SecretString"])
    for provider in secret:  # every provider the local secret has a key for, each asked through its free call
        assert lines[f"key {provider}"].startswith("ok"), lines
    assert lines["callback API"].startswith("ok")
    assert "not checked locally" in lines["reconcile schedule"]
    for dlq in ("submit", "finalize", "notify", "poll"):
        assert lines[f"{dlq} DLQ"].startswith("ok"), lines
    for state in ("SUBMITTED", "SUCCEEDED", "RECEIVED"):
        assert lines[f"{state} jobs"].startswith("ok"), lines
    # The keys themselves are never printed.
    assert not any(isinstance(key, str) and key in " ".join(lines.values()) for key in secret.values())


def test_a_removed_provider_key_is_reported(doctor_stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    client, secret_id = secrets(doctor_stack), doctor_stack.info["secret_id"]
    original = client.get_secret_value(SecretId=secret_id)["SecretString"]
    keys = json.loads(original)
    keys.pop("kie")  # the DefaultProvider's
    keys["runware"] = "not-the-simulator-key"
    client.put_secret_value(SecretId=secret_id, SecretString=json.dumps(keys))
    try:
        code, lines = doctor(doctor_stack, capsys)
    finally:
        client.put_secret_value(SecretId=secret_id, SecretString=original)
    assert code == 1
    assert lines["key kie"].startswith("FIX") and "no key for `kie`" in lines["key kie"]
    assert lines["key runware"].startswith("FIX") and "refused the API key" in lines["key runware"]
    assert "not-the-simulator-key" not in " ".join(lines.values())
    assert doctor(doctor_stack, capsys)[0] == 0  # put back, all ok again


def test_a_message_in_a_dlq_is_reported(doctor_stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    url = doctor_stack.info["notify_dlq_url"]
    doctor_stack.sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"jobId": "a notification that failed"}))
    try:
        code, lines = doctor(doctor_stack, capsys)
    finally:
        doctor_stack.sqs.purge_queue(QueueUrl=url)
    assert code == 1
    assert lines["notify DLQ"].startswith("FIX") and "1 message(s)" in lines["notify DLQ"]
    assert lines["submit DLQ"].startswith("ok")


def test_a_stuck_job_is_reported(doctor_stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = "5" * 32
    doctor_stack.table.put_item(Item={"jobId": job_id, "status": "SUBMITTED", "updatedAt": OLD, "createdAt": OLD, "provider": "kie"})
    try:
        code, lines = doctor(doctor_stack, capsys)
    finally:
        doctor_stack.table.delete_item(Key={"jobId": job_id})
    assert code == 1
    assert lines["SUBMITTED jobs"].startswith("FIX") and job_id in lines["SUBMITTED jobs"]
    assert lines["SUCCEEDED jobs"].startswith("ok")
