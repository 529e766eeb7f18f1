"""One local stack (a subprocess: moto server, simulator, dispatcher, real handlers) for the e2e ring."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import httpx
import pytest

from local.media import make_clip
from local.stack import spawn

TERMINAL = {"COMPLETED", "FAILED"}


@dataclass
class Stack:
    info: dict[str, Any]
    s3: Any
    sqs: Any
    table: Any
    sim: httpx.Client
    api: httpx.Client
    clip: bytes
    workdir: Path

    @property
    def bucket(self) -> str:
        return str(self.info["input_bucket"])

    @property
    def prefix(self) -> str:
        return str(self.info["input_prefix"])

    def put(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)

    def put_sidecar(self, key: str, document: dict[str, Any]) -> None:
        self.put(key, json.dumps(document).encode())

    def job_for(self, sidecar_key: str) -> dict[str, Any] | None:
        items = self.table.scan(FilterExpression="sidecarKey = :key", ExpressionAttributeValues={":key": sidecar_key}, ConsistentRead=True)["Items"]
        return items[0] if items else None

    def wait_for_job(self, sidecar_key: str, states: set[str] = TERMINAL, timeout: float = 90) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def reached() -> bool:
            job = self.job_for(sidecar_key)
            if job is not None:
                found.update(job)
            return job is not None and job["status"] in states

        try:
            wait_until(reached, timeout, f"job for {sidecar_key} to reach {states}")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (last state: {found.get('status')}, error: {found.get('error')})") from None
        return found

    def output_keys(self, prefix: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.info["output_bucket"], Prefix=prefix)
        return sorted(entry["Key"] for entry in listed.get("Contents", []))

    def output_json(self, key: str, timeout: float = 15) -> dict[str, Any]:
        """An output JSON file, waited for: error.json is written just after the job's FAILED state."""
        wait_until(lambda: bool(self.output_keys(key)), timeout, f"s3://{self.info['output_bucket']}/{key}")
        body = self.s3.get_object(Bucket=self.info["output_bucket"], Key=key)["Body"].read()
        document: dict[str, Any] = json.loads(body)
        return document

    def output_bytes(self, key: str) -> bytes:
        body: bytes = self.s3.get_object(Bucket=self.info["output_bucket"], Key=key)["Body"].read()
        return body

    def sim_tasks(self, marker: str | None = None) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = self.sim.get("/_sim/tasks").json()
        if marker is None:
            return tasks
        return [task for task in tasks if marker in json.dumps(task.get("request", {}))]

    def sim_config(self, **settings: Any) -> None:
        self.sim.post("/_sim/config", json=settings).raise_for_status()

    def sim_faults(self, rules: list[dict[str, Any]]) -> None:
        self.sim.post("/_sim/faults", json=rules).raise_for_status()

    def s3_event(self, key: str) -> str:
        """The S3 ObjectCreated notification S3 sends for ``key`` (to deliver it again)."""
        head = self.s3.head_object(Bucket=self.bucket, Key=key)
        record = {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": self.info["region"],
            "eventTime": "2026-01-01T00:00:00.000Z",
            "eventName": "ObjectCreated:Put",
            "s3": {
                "s3SchemaVersion": "1.0",
                "bucket": {"name": self.bucket, "arn": f"arn:aws:s3:::{self.bucket}"},
                "object": {"key": quote_plus(key), "size": head["ContentLength"], "eTag": head["ETag"].strip('"')},
            },
        }
        return json.dumps({"Records": [record]})


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


LEAST_PRIVILEGE_MODULE = "test_least_privilege.py"
OPENED_STACKS: list[dict[str, Any]] = []  # stack.json of every stack this e2e run opened


@contextlib.contextmanager
def open_stack(workdir: Path, *stack_args: str) -> Iterator[Stack]:
    """A local stack subprocess (``stack_args`` go to ``python -m local.stack``) and clients for it."""
    # SQS redelivers after the queue's visibility timeout x 0.01 (SubmitQueue: 720 s -> 7 s).
    # --strict-env: a handler that reads a resource name or URL its template entry does not define fails.
    # --record-aws-calls: every AWS call of the handlers is logged; test_least_privilege.py audits
    # the calls of every stack the e2e run opened (OPENED_STACKS), after all the other tests.
    process, info = spawn(workdir, "--sqs-time-scale", "0.01", "--strict-env", "--record-aws-calls", *stack_args)
    OPENED_STACKS.append(info)
    try:
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=info["region"])
        endpoint = info["s3_endpoint"]
        clip = make_clip(Path(workdir) / "clip.mp4", seconds=7).read_bytes()
        with httpx.Client(base_url=info["simulator_url"], timeout=10) as sim, httpx.Client(base_url=info["api_url"], timeout=30) as api:
            yield Stack(
                info=info,
                s3=session.client("s3", endpoint_url=endpoint),
                sqs=session.client("sqs", endpoint_url=endpoint),
                table=session.resource("dynamodb", endpoint_url=endpoint).Table(info["jobs_table"]),
                sim=sim,
                api=api,
                clip=clip,
                workdir=Path(workdir),
            )
    finally:
        process.terminate()
        process.wait(timeout=30)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The least-privilege audit runs after every other e2e test: it checks the calls they made."""
    items.sort(key=lambda item: item.path.name == LEAST_PRIVILEGE_MODULE)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with open_stack(tmp_path_factory.mktemp("stack")) as opened:
        yield opened


@pytest.fixture
def stack_clean(stack: Stack) -> Iterator[Stack]:
    """The stack with the simulator's settings and faults back to their defaults after the test."""
    yield stack
    stack.sim.delete("/_sim/faults")
    stack.sim_config(callback_shape="A", hold=False)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]
