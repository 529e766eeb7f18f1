"""SQS redelivery like Lambda's poller, through the local stack (moto server over HTTP): a message
whose invocation failed (an error, or reported in batchItemFailures) is left alone and comes back
when the queue's visibility timeout ends (the template's, times --sqs-time-scale); a message whose
invocation succeeded is deleted."""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from local.client import aws_client, wait_for
from local.stack import spawn, terminate
from local.template_config import load_template_config

TIME_SCALE = 0.01
TEMPLATE = load_template_config(Path(__file__).resolve().parents[2] / "template.yaml")
VISIBILITY = max(1, round(TEMPLATE.submit_queue.visibility_timeout * TIME_SCALE))  # 720 s x 0.01 -> 7 s

# Records each delivery as <out>/<marker>.<receive count>.json with the time the handler saw it.
# "raise" fails the invocation and "report" lists the record in batchItemFailures on their first
# delivery; anything else (the s3:TestEvent too) succeeds.
FAKE_SUBMIT = """
import json, pathlib, time

OUT = pathlib.Path({out!r})


def lambda_handler(event, context):
    failures = []
    for record in event["Records"]:
        body, count = record["body"], int(record["attributes"]["ApproximateReceiveCount"])
        marker = json.loads(body).get("marker", "other") if body.startswith("{{") else "other"
        (OUT / f"{{marker}}.{{count}}.json").write_text(json.dumps({{"at": time.time(), "messageId": record["messageId"]}}))
        if count == 1 and marker.startswith("raise"):
            raise RuntimeError("the first delivery fails")
        if count == 1 and marker.startswith("report"):
            failures.append({{"itemIdentifier": record["messageId"]}})
    return {{"batchItemFailures": failures}}
"""


@dataclass
class Stack:
    info: dict[str, Any]
    sqs: Any
    out: Path

    def send(self, marker: str) -> None:
        self.sqs.send_message(QueueUrl=self.info["submit_queue_url"], MessageBody=json.dumps({"marker": marker}))

    def deliveries(self, marker: str) -> list[dict[str, Any]]:
        found = sorted(self.out.glob(f"{marker}.*.json"), key=lambda path: int(path.name.split(".")[-2]))
        return [json.loads(path.read_text()) for path in found]

    def queue_empty(self) -> bool:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.info["submit_queue_url"], AttributeNames=names)["Attributes"]
        return all(attributes[name] == "0" for name in names)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("sqs-redelivery")
    out = root / "deliveries"
    out.mkdir()
    handler = root / "fake_submit.py"
    handler.write_text(textwrap.dedent(FAKE_SUBMIT.format(out=str(out))))
    workdir = root / "work"
    args = ["--no-simulator", "--quiet", "--sqs-time-scale", str(TIME_SCALE), "--handler", f"submit={handler}"]
    process, info = spawn(workdir, *args, timeout=60)
    try:
        yield Stack(info=info, sqs=aws_client("sqs", info), out=out)
    finally:
        assert terminate(process) == 0, (workdir / "stack.log").read_text()


def test_each_queue_has_the_templates_visibility_timeout_scaled(stack: Stack) -> None:
    submit = stack.sqs.get_queue_attributes(QueueUrl=stack.info["submit_queue_url"], AttributeNames=["VisibilityTimeout"])["Attributes"]
    assert submit["VisibilityTimeout"] == str(VISIBILITY) == "7"
    undelivered_template = int(TEMPLATE.resources["UndeliveredJobEventQueue"]["Properties"]["VisibilityTimeout"])
    undelivered = stack.sqs.get_queue_attributes(QueueUrl=stack.info["undelivered_events_url"], AttributeNames=["VisibilityTimeout"])["Attributes"]
    assert undelivered["VisibilityTimeout"] == str(max(1, round(undelivered_template * TIME_SCALE)))


@pytest.mark.parametrize("failure", ["raise", "report"])
def test_a_failed_message_comes_back_after_the_visibility_timeout_and_a_delivered_one_is_deleted(stack: Stack, failure: str) -> None:
    unique = uuid.uuid4().hex[:8]
    ok, failing = f"ok-{unique}", f"{failure}-{unique}"
    stack.send(ok)
    wait_for(lambda: stack.deliveries(ok), 30, message=f"the first delivery of {ok}")
    stack.send(failing)
    first, second = wait_for(lambda: stack.deliveries(failing)[1:] and stack.deliveries(failing)[:2], VISIBILITY * 3 + 15, message=f"{failing} again")
    assert first["messageId"] == second["messageId"]
    gap = second["at"] - first["at"]
    # Not before the visibility timeout (the old poller retried after 1 s), and not much after it.
    assert 0.8 * VISIBILITY <= gap <= VISIBILITY + 5, f"redelivered after {gap:.1f} s, the queue's visibility timeout is {VISIBILITY} s"
    wait_for(stack.queue_empty, 30, message="the submit queue to be empty (both messages deleted)")
    # Long past the visibility timeout of the message that succeeded: it was deleted, never delivered again.
    assert len(stack.deliveries(ok)) == 1
    assert len(stack.deliveries(failing)) == 2
