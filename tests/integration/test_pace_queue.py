"""Through a local stack (real handlers, the simulator, moto server): a job over its provider's
rate limit waits on the PaceQueue, which the submit function reads through an event source of its
own, so its retry never queues behind the S3 notifications on the SubmitQueue."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from local.client import aws_client, wait_for
from local.iam_audit import load_calls
from local.media import make_clip
from local.stack import spawn, terminate

# One kie task per 20 s: the second job's slot is about 21 s out (the gate's margin), long
# enough to see its message wait, delayed, on the pace queue.
LIMITS = {"kie": "1/20"}
WAIT = 90.0  # seconds; every wait below is bounded by this
SUBMITTED_OR_LATER = {"SUBMITTED", "SUCCEEDED", "COMPLETED"}


@dataclass
class PacedStack:
    info: dict[str, Any]
    workdir: Path
    s3: Any
    sqs: Any
    dynamodb: Any
    clip: bytes

    def upload(self, stem: str) -> str:
        self.s3.put_object(Bucket=self.info["input_bucket"], Key=f"{stem}.mp4", Body=self.clip)
        sidecar = f"{stem}.json"
        self.s3.put_object(Bucket=self.info["input_bucket"], Key=sidecar, Body=json.dumps({"provider": "kie", "prompt": f"paced {stem}"}).encode())
        return sidecar

    def job_for(self, sidecar_key: str) -> dict[str, Any] | None:
        items = self.dynamodb.scan(
            TableName=self.info["jobs_table"],
            FilterExpression="sidecarKey = :key",
            ExpressionAttributeValues={":key": {"S": sidecar_key}},
            ConsistentRead=True,
        )["Items"]
        return items[0] if items else None

    def status(self, sidecar_key: str) -> str | None:
        job = self.job_for(sidecar_key)
        return job["status"]["S"] if job else None

    def messages(self, queue_url: str) -> dict[str, int]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"]
        attributes = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
        return {name.removeprefix("ApproximateNumberOfMessages") or "Visible": int(attributes[name]) for name in names}

    def submit_sends(self) -> list[str]:
        """The queue of every SendMessage the submit function made."""
        calls = load_calls(Path(self.info["aws_calls_log"]))
        return [str(call.params.get("QueueUrl")) for call in calls if call.function == "submit" and call.operation == "SendMessage"]


@pytest.fixture(scope="module")
def paced_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacedStack]:
    workdir = tmp_path_factory.mktemp("pace-queue")
    args = ["--sqs-time-scale", "0.01", "--strict-env", "--record-aws-calls", "--env", f"PROVIDER_RATE_LIMITS={json.dumps(LIMITS)}"]
    process, info = spawn(workdir, *args, timeout=90)
    try:
        yield PacedStack(
            info=info,
            workdir=workdir,
            s3=aws_client("s3", info),
            sqs=aws_client("sqs", info),
            dynamodb=aws_client("dynamodb", info),
            clip=make_clip(workdir / "clip.mp4", seconds=3).read_bytes(),
        )
    finally:
        assert terminate(process) == 0, (workdir / "stack.log").read_text()


def test_the_pace_queue_is_provisioned_from_the_template(paced_stack: PacedStack) -> None:
    info = paced_stack.info
    assert info["pace_queue_url"].endswith("/aleph-pace")
    attributes = paced_stack.sqs.get_queue_attributes(QueueUrl=info["pace_queue_url"], AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert (redrive["maxReceiveCount"], redrive["deadLetterTargetArn"].rsplit(":", 1)[-1]) == (5, "aleph-submit-dlq")
    assert attributes["VisibilityTimeout"] == "7"  # the template's 720 s x the stack's 0.01
    # The submit function and the reconciler are given its URL, as the template does.
    for function in ("submit", "reconcile"):
        assert info["function_env"][function]["PACE_QUEUE_URL"] == info["pace_queue_url"]
        assert "SUBMIT_QUEUE_URL" not in info["function_env"][function]


def test_a_job_over_the_limit_waits_on_the_pace_queue_and_is_submitted_from_it(paced_stack: PacedStack) -> None:
    stack, info = paced_stack, paced_stack.info
    first = stack.upload("incoming/paced/first")
    wait_for(lambda: stack.status(first) in SUBMITTED_OR_LATER, WAIT, message="the first job submitted")
    second = stack.upload("incoming/paced/second")

    # Over the limit: the second job waits in RECEIVED with its retry delayed on the pace queue;
    # nothing was put back on the submit queue.
    wait_for(lambda: stack.messages(info["pace_queue_url"])["Delayed"] == 1, WAIT, message="a delayed message on the pace queue")
    job = stack.job_for(second)
    assert job is not None and job["status"]["S"] == "RECEIVED" and "paceSlot" in job, job
    assert stack.messages(info["submit_queue_url"])["Delayed"] == 0
    assert stack.submit_sends() == [info["pace_queue_url"]]

    # At its slot the pace queue's own event source brings it back and it is submitted.
    wait_for(lambda: stack.status(second) in SUBMITTED_OR_LATER, WAIT, message="the waiting job submitted at its slot")
    wait_for(lambda: not any(stack.messages(info["pace_queue_url"]).values()), WAIT, message="its message taken off the pace queue")
    assert stack.submit_sends() == [info["pace_queue_url"]]
