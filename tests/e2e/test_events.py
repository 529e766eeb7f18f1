"""Job events: a completed and a failed job each put one event on the stack's EventBridge bus
(moto's), which a rule delivers to an SQS queue here; the events follow the documented schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from local.client import aws_client
from schemas.job_events import JobEventDetail

from .conftest import Stack, wait_until
from .test_pipeline import run_pair

pytestmark = pytest.mark.e2e

DETAIL_FIELDS = {
    "jobId", "state", "stack", "provider", "model", "inputBucket", "sidecarKey", "inputKey", "inputUrl",
    "outputBucket", "outputPrefix", "outputKeys", "cost", "error", "createdAt", "finishedAt",
}  # fmt: skip


class EventQueue:
    def __init__(self, stack: Stack, name: str) -> None:
        self.sqs = aws_client("sqs", stack.info)
        self.events = aws_client("events", stack.info)
        self.url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.rule = name
        bus = stack.info["event_bus_name"]
        self.events.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps({"source": ["aleph.pipeline"]}))
        self.events.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "queue", "Arn": arn}])
        self.bus = bus
        self.received: list[dict[str, Any]] = []

    def drain(self) -> None:
        for message in self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            self.received.append(json.loads(message["Body"]))
            self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])

    def for_job(self, job_id: str) -> list[dict[str, Any]]:
        return [event for event in self.received if event["detail"]["jobId"] == job_id]

    def close(self) -> None:
        self.events.remove_targets(Rule=self.rule, EventBusName=self.bus, Ids=["queue"])
        self.events.delete_rule(Name=self.rule, EventBusName=self.bus)
        self.sqs.delete_queue(QueueUrl=self.url)


@pytest.fixture
def events(stack_clean: Stack, unique: str) -> Iterator[EventQueue]:
    queue = EventQueue(stack_clean, f"job-events-{unique}")
    yield queue
    queue.close()


def wait_for_event(events: EventQueue, job_id: str) -> dict[str, Any]:
    wait_until(lambda: events.drain() or bool(events.for_job(job_id)), 30, f"the event of job {job_id}")
    return events.for_job(job_id)[0]


def test_completed_and_failed_jobs_each_send_one_event_with_the_documented_detail(stack_clean: Stack, events: EventQueue, unique: str) -> None:
    stack = stack_clean
    message = f"Your prompt was caught by our AI moderator ({unique})"
    stack.sim_faults([{"fault": "generation_failure", "match_prompt": f"fail {unique}", "msg": message}])
    good = run_pair(stack, f"incoming/events/ok-{unique}", f"ok {unique}", extra={"provider": "apikley"})
    bad = run_pair(stack, f"incoming/events/fail-{unique}", f"fail {unique}")
    completed, failed = stack.wait_for_job(good), stack.wait_for_job(bad)
    assert (completed["status"], failed["status"]) == ("COMPLETED", "FAILED")

    event = wait_for_event(events, completed["jobId"])
    assert (event["source"], event["detail-type"]) == ("aleph.pipeline", "Job Completed")
    detail = event["detail"]
    assert set(detail) == DETAIL_FIELDS
    JobEventDetail.model_validate(detail)
    prefix = f"events/ok-{unique}/{completed['jobId']}/"
    assert detail["state"] == "COMPLETED"
    assert (detail["provider"], detail["model"], detail["stack"]) == ("apikley", "aleph", "aleph")
    assert (detail["inputBucket"], detail["sidecarKey"], detail["inputKey"]) == (stack.bucket, good, f"incoming/events/ok-{unique}.mp4")
    assert (detail["outputBucket"], detail["outputPrefix"]) == (stack.info["output_bucket"], prefix)
    assert sorted(detail["outputKeys"]) == stack.output_keys(prefix) == [prefix + "cover.png", prefix + "job.json", prefix + "result.mp4"]
    assert detail["error"] is None and detail["cost"] is None
    assert detail["finishedAt"] == completed["updatedAt"]

    event = wait_for_event(events, failed["jobId"])
    assert (event["source"], event["detail-type"]) == ("aleph.pipeline", "Job Failed")
    detail = event["detail"]
    assert set(detail) == DETAIL_FIELDS
    JobEventDetail.model_validate(detail)
    assert detail["state"] == "FAILED"
    assert detail["error"] == {
        "code": "generation_failed",
        "message": message,
        "stage": "provider",
        "retryable": False,
        "hint": "The provider could not make the edit; adjust the prompt or input.",
    }
    assert detail["outputKeys"] == [f"events/fail-{unique}/{failed['jobId']}/error.json"]
    assert detail["provider"] == "kie"

    # One event per job, however long we look: later writes and other states send nothing.
    events.drain()
    assert len(events.for_job(completed["jobId"])) == 1
    assert len(events.for_job(failed["jobId"])) == 1


def test_an_intake_failure_sends_a_job_failed_event(stack_clean: Stack, events: EventQueue, unique: str) -> None:
    stack = stack_clean
    stack.put(f"incoming/events/bad-{unique}.mp4", stack.clip)
    stack.put_sidecar(f"incoming/events/bad-{unique}.json", {"prompt": "p", "numberResults": 2})
    job = stack.wait_for_job(f"incoming/events/bad-{unique}.json")
    detail = wait_for_event(events, job["jobId"])["detail"]
    assert detail["error"]["code"] == "unsupported_option"
    assert detail["error"]["stage"] == "intake"


def test_a_job_failed_with_a_300_kb_provider_message_still_sends_its_event(stack_clean: Stack, events: EventQueue, unique: str) -> None:
    from aleph_pipeline.notifications import EVENT_BUDGET_BYTES, entry_size

    stack = stack_clean
    message = f"moderation ({unique}): " + "x" * 300_000
    stack.sim_faults([{"fault": "generation_failure", "match_prompt": f"huge {unique}", "msg": message}])
    failed = stack.wait_for_job(run_pair(stack, f"incoming/events/huge-{unique}", f"huge {unique}"))
    assert failed["status"] == "FAILED"
    event = wait_for_event(events, failed["jobId"])
    detail = event["detail"]
    JobEventDetail.model_validate(detail)
    assert detail["error"]["message"].startswith(f"moderation ({unique}): xxx")
    entry = {"Source": event["source"], "DetailType": event["detail-type"], "Detail": json.dumps(detail, ensure_ascii=False, separators=(",", ":"))}
    assert entry_size(entry) <= EVENT_BUDGET_BYTES
