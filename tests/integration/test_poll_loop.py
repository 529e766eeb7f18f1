"""The per-job poll loop against moto server over HTTP: its delayed messages on a real queue, read
by the local stack's SQS event source into the real poll handler, and a fake provider without
webhooks. Delays are shortened (1 s, then 2 s) so a loop of a few polls takes seconds."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from aleph_pipeline import polling
from aleph_pipeline.config import get_settings
from aleph_pipeline.jobs import JobStore, hash_token
from aleph_pipeline.polling import PollMessage
from aleph_pipeline.providers import Outcome
from local.client import aws_client, wait_for
from local.dispatcher import SqsEventSource
from local.lambda_runtime import Invocation
from local.stack import spawn, terminate
from local.template_config import load_template_config
from tests.integration.test_sample_events import Context, load_handler

JOB_ID = "0123456789abcdef0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]
RESULT_URL = "https://results.example.test/task-1/result.mp4"


@dataclass
class PolledProvider:
    """A provider that never calls back: ``running`` for the first ``running_polls`` polls, then success."""

    running_polls: int
    id: str = "polled"
    webhooks = False
    allowed_result_hosts: tuple[str, ...] = ("results.example.test",)
    polls: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def poll(self, task_id: str) -> Outcome:
        assert task_id == "task-1"
        with self.lock:
            self.polls.append(time.monotonic())
            done = len(self.polls) > self.running_polls
        return Outcome("succeeded", task_id, (RESULT_URL,)) if done else Outcome("running", task_id)


class InProcessFunction:
    """The real poll handler, called in this process where SqsEventSource calls a function."""

    name = "poll"

    def __init__(self) -> None:
        self.handler = load_handler("poll").lambda_handler

    def invoke(self, event: dict[str, Any]) -> Invocation:
        started = time.monotonic()
        try:
            result = self.handler(event, Context())
        except Exception as exc:
            return Invocation(uuid.uuid4().hex, False, error=f"{type(exc).__name__}: {exc}", duration=time.monotonic() - started)
        return Invocation(uuid.uuid4().hex, True, result=result, duration=time.monotonic() - started)


@dataclass
class Loop:
    queue_url: str
    provider: PolledProvider
    sent: list[tuple[int, int]]  # (seq, delay) of every message the loop sent

    def messages_left(self) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"]
        attributes = polling.client("sqs").get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names)["Attributes"]
        return sum(int(attributes[name]) for name in names)

    def status(self) -> str:
        job = JobStore().get(JOB_ID)
        assert job is not None
        return job.state.value


@pytest.fixture
def loop(aws: dict[str, Any], moto_server: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Loop]:
    sqs = boto3.client("sqs", endpoint_url=moto_server)
    queue_url = sqs.create_queue(QueueName=f"poll-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": "5"})["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    for name, value in {"POLL_QUEUE_URL": queue_url, "POLL_FIRST_DELAY_SECONDS": "1", "POLL_MAX_DELAY_SECONDS": "2", "POLL_JITTER": "0"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    aws["table"].put_item(
        Item={
            "jobId": JOB_ID,
            "status": "SUBMITTED",
            "provider": "polled",
            "tokenHash": hash_token("test-token"),
            "outputPrefix": f"team-a/shot1/{JOB_ID}/",
            "providerTaskId": "task-1",
            "deadlineAt": int(time.time()) + 3600,
            "history": [{"state": "RECEIVED", "at": "t0"}, {"state": "SUBMITTED", "at": "t1"}],
            "updatedAt": "t1",
        }
    )
    provider = PolledProvider(running_polls=request.param)
    monkeypatch.setattr(polling, "get_provider", lambda provider_id: provider)
    sent: list[tuple[int, int]] = []
    real_send = polling.send

    def recording_send(message: PollMessage, delay_seconds: int) -> None:
        sent.append((message.seq, delay_seconds))
        real_send(message, delay_seconds)

    monkeypatch.setattr(polling, "send", recording_send)
    # Two pollers, so a duplicate can be handled at the same time as the message it copies.
    source = SqsEventSource(
        InProcessFunction(),  # type: ignore[arg-type]
        queue_url=queue_url,
        queue_arn=queue_arn,
        region="us-east-1",
        client_factory=lambda service: boto3.client(service, endpoint_url=moto_server),
        batch_size=3,
        concurrency=2,
        wait_seconds=1,
    )
    source.start()
    try:
        yield Loop(queue_url, provider, sent)
    finally:
        source.stop()
        assert source.join(10) == []


@pytest.mark.parametrize("loop", [2], indirect=True)
def test_a_task_polled_running_running_success_succeeds_in_a_few_intervals(loop: Loop) -> None:
    started = time.monotonic()
    assert polling.start(JOB_ID)
    wait_for(lambda: loop.status() == "SUCCEEDED", timeout=30, interval=0.2, message="the job to succeed through its poll loop")
    assert len(loop.provider.polls) == 3
    assert loop.sent == [(1, 1), (2, 2), (3, 2)]  # 1 s, then x1.5 (rounded), capped at 2 s
    # Each poll came after its delay: the messages were delayed by SQS, not handled at once.
    gaps = [later - earlier for earlier, later in zip([started, *loop.provider.polls], loop.provider.polls, strict=False)]
    assert all(gap >= delay - 0.3 for gap, (_, delay) in zip(gaps, loop.sent, strict=True)), gaps
    job = JobStore().get(JOB_ID)
    assert job is not None and job.item["result"]["videos"] == [RESULT_URL]
    assert job.poll_seq == 2  # two steps taken; the third poll's success ended the loop


@pytest.mark.parametrize("loop", [4], indirect=True)
def test_a_duplicated_message_does_not_fork_the_loop(loop: Loop) -> None:
    assert polling.start(JOB_ID)
    # The same step sent a second time (an at-least-once duplicate: another message id).
    polling.client("sqs").send_message(QueueUrl=loop.queue_url, MessageBody=PollMessage(JOB_ID, 1).to_body(), DelaySeconds=1)
    wait_for(lambda: loop.status() == "SUCCEEDED", timeout=40, interval=0.2, message="the job to succeed through its poll loop")
    seqs = [seq for seq, _ in loop.sent]
    assert seqs == sorted(set(seqs)) == list(range(1, len(seqs) + 1)), f"a step was sent twice: {loop.sent}"
    # Five answers settle it (four running, one success); the duplicate adds at most one poll.
    assert len(loop.provider.polls) in (5, 6)
    # Nothing is left to deliver: no second chain goes on polling after the job succeeded.
    wait_for(lambda: loop.messages_left() == 0, timeout=10, interval=0.2, message="the poll queue to empty")
    assert len(loop.provider.polls) in (5, 6)


# ------------------------------------------------------------------ the local stack runs the loop's queue

TIME_SCALE = 0.01


def test_the_local_stack_provisions_the_poll_queue_and_delivers_it_to_the_poll_function(tmp_path: Path) -> None:
    template = load_template_config(ROOT / "template.yaml")
    process, info = spawn(tmp_path / "work", "--no-simulator", "--quiet", "--sqs-time-scale", str(TIME_SCALE), timeout=60)
    try:
        sqs = aws_client("sqs", info)
        queue_url = info["poll_queue_url"]
        # From the template: the dead-letter queue, and the visibility timeout scaled like the others'.
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["VisibilityTimeout", "RedrivePolicy"])["Attributes"]
        assert attributes["VisibilityTimeout"] == str(max(1, round(template.queue("poll_queue").visibility_timeout * TIME_SCALE))) == "7"  # type: ignore[union-attr]
        assert json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] == 5
        assert json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"].endswith(info["poll_dlq_url"].rsplit("/", 1)[-1])
        # The function that continues the loop and the one that starts it both have the queue.
        assert info["function_env"]["poll"]["POLL_QUEUE_URL"] == queue_url
        assert info["function_env"]["submit"]["POLL_QUEUE_URL"] == queue_url
        assert "POLL_QUEUE_URL" not in info["function_env"]["callback"]
        # A poll step for a job that does not exist is read by the poll function and dropped.
        sqs.send_message(QueueUrl=queue_url, MessageBody=PollMessage("f" * 32, 1).to_body())
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"]

        def drained() -> bool:
            found = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
            return all(found[name] == "0" for name in names)

        wait_for(drained, timeout=30, interval=0.2, message="the poll function to take the message")
        # The poll function's own log line (the stack tags each function's lines) says why it dropped it.
        handled = [json.loads(line) for line in (tmp_path / "work" / "stack.log").read_text().splitlines() if '"poll message handled"' in line]
        assert [(entry["function"], entry["result"]) for entry in handled] == [("poll", "finished")]
    finally:
        assert terminate(process) == 0, (tmp_path / "work" / "stack.log").read_text()
