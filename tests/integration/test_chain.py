"""Failing over along a provider chain, through moto server and the provider simulator (real
HTTP both): what the simulator created is the truth for "one task in all"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from aleph_pipeline.intake import handle_object_created
from aleph_pipeline.jobs import JobState, JobStore
from aleph_pipeline.keys import job_id_for
from aleph_pipeline.outputs import manifest
from aleph_pipeline.providers import PROVIDER_IDS
from aleph_pipeline.status import describe
from aleph_pipeline.storage import head
from local.simulator.config import ProviderKey
from local.simulator.server import SimulatorServer

from .conftest import clear_caches
from .sim_servers import CallbackSink, serve, sink_handler

MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 2000  # an MP4's first box


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorServer]:
    # The same keys the aws fixture puts in the provider secret.
    keys = {provider: ProviderKey(api_key=f"key-{provider}") for provider in PROVIDER_IDS}
    with SimulatorServer("127.0.0.1", 0, keys=keys) as running:
        yield running


@pytest.fixture(scope="module")
def callbacks() -> Iterator[CallbackSink]:
    sink = CallbackSink()
    for url in serve(ThreadingHTTPServer(("127.0.0.1", 0), sink_handler(sink))):
        sink.url = url
        yield sink


class Chain:
    def __init__(self, aws: dict[str, Any], sim: httpx.Client) -> None:
        self.aws = aws
        self.sim = sim

    def faults(self, rules: list[dict[str, Any]]) -> None:
        self.sim.post("/_sim/faults", json=rules).raise_for_status()

    def tasks(self) -> list[dict[str, Any]]:
        answer = self.sim.get("/_sim/tasks")
        answer.raise_for_status()
        listed = answer.json()
        tasks: list[dict[str, Any]] = listed["tasks"] if isinstance(listed, dict) else listed
        return tasks

    def drop(self, name: str, sidecar: dict[str, Any]) -> str:
        """Upload the video, then the sidecar, and run intake for the sidecar's event; the job id."""
        s3, bucket = self.aws["s3"], self.aws["input"]
        s3.put_object(Bucket=bucket, Key=f"incoming/{name}.mp4", Body=MP4)
        key = f"incoming/{name}.json"
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(sidecar).encode())
        handle_object_created(bucket, key)
        info = head(bucket, key)
        assert info is not None
        return job_id_for(bucket, key, info.version_marker)


@pytest.fixture
def chain(aws: dict[str, Any], simulator: SimulatorServer, callbacks: CallbackSink, monkeypatch: pytest.MonkeyPatch) -> Iterator[Chain]:
    monkeypatch.setenv("PROVIDER_ENDPOINTS", json.dumps({provider: f"{simulator.url}/{provider}" for provider in PROVIDER_IDS}))
    monkeypatch.setenv("CALLBACK_API_URL", callbacks.url)
    monkeypatch.setenv("PROVIDER_CHAIN", "kie,apikley,runware")
    clear_caches()
    with httpx.Client(base_url=simulator.url, timeout=10.0, trust_env=False) as sim:
        sim.post("/_sim/reset").raise_for_status()
        yield Chain(aws, sim)
        sim.post("/_sim/reset").raise_for_status()


def test_kie_in_maintenance_hands_the_job_to_apikley_one_task_in_all(chain: Chain) -> None:
    chain.faults([{"fault": "maintenance", "provider": "kie"}])
    job_id = chain.drop("shot", {"prompt": "make it snow"})

    job = JobStore().get(job_id)
    assert job is not None
    assert job.state == JobState.SUBMITTED
    assert job.provider == "apikley"
    tasks = chain.tasks()
    assert [task["provider"] for task in tasks] == ["apikley"]
    assert job.provider_task_id == tasks[0]["taskId"]
    [tried] = job.providers_tried
    assert tried["provider"] == "kie"
    assert tried["model"] == "aleph"
    assert tried["providerCode"] == "455"
    assert "maintenance" in tried["reason"]

    document = manifest(job, [], datetime.now(UTC).isoformat())
    assert document["provider"] == "apikley"
    assert [entry["provider"] for entry in document["providersTried"]] == ["kie"]
    assert [entry["provider"] for entry in describe(job)["providersTried"]] == ["kie"]


def test_a_provider_that_cannot_honour_an_option_is_skipped(chain: Chain) -> None:
    # crun takes no watermark: kie refuses for now, crun is passed over, apikley runs it.
    chain.faults([{"fault": "maintenance", "provider": "kie"}])
    job_id = chain.drop("marked", {"prompt": "make it snow", "watermark": "team", "providers": ["kie", "crun", "apikley"]})

    job = JobStore().get(job_id)
    assert job is not None and job.state == JobState.SUBMITTED
    assert job.provider == "apikley"
    assert [task["provider"] for task in chain.tasks()] == ["apikley"]
    assert [entry["provider"] for entry in job.providers_tried] == ["kie"]


def test_runware_out_of_credits_hands_the_job_on_with_the_default_model_of_the_next(chain: Chain) -> None:
    chain.faults([{"fault": "insufficient_credits", "provider": "runware"}])
    job_id = chain.drop("credits", {"prompt": "make it snow", "model": "runway:2@1", "providers": ["runware", "kie"]})

    job = JobStore().get(job_id)
    assert job is not None and job.state == JobState.SUBMITTED
    assert (job.provider, job.item["model"]) == ("kie", "aleph")
    assert "runway:2@1" in job.item["modelNote"]
    assert [task["provider"] for task in chain.tasks()] == ["kie"]
    [tried] = job.providers_tried
    assert (tried["provider"], tried["model"], tried["code"]) == ("runware", "runway:2@1", "provider_rejected")


def test_an_ambiguous_answer_never_moves_the_job(chain: Chain) -> None:
    # kie made the task, then a gateway answered 502: the job waits for kie, it is never sent on.
    chain.faults([{"fault": "submit_5xx_after_create", "provider": "kie", "http_status": 502}])
    job_id = chain.drop("gateway", {"prompt": "make it snow"})

    job = JobStore().get(job_id)
    assert job is not None
    assert job.state == JobState.RECEIVED
    assert job.submit_unanswered
    assert job.providers_tried == []
    assert [task["provider"] for task in chain.tasks()] == ["kie"]


def test_a_chain_every_provider_refused_fails_naming_each_answer(chain: Chain) -> None:
    chain.faults([{"fault": "maintenance", "provider": "kie"}, {"fault": "insufficient_credits", "provider": "apikley"}])
    job_id = chain.drop("nobody", {"prompt": "make it snow", "providers": ["kie", "apikley"]})

    job = JobStore().get(job_id)
    assert job is not None and job.state == JobState.FAILED
    error = job.item["error"]
    assert error["code"] == "provider_rejected"  # apikley's 402, the last refusal
    assert "kie: kie:" in error["message"] and "apikley: apikley:" in error["message"]
    assert "maintenance" in error["message"] and "Insufficient credits" in error["message"]
    assert chain.tasks() == []
    written = chain.aws["s3"].get_object(Bucket=chain.aws["output"], Key=f"{job.output_prefix}error.json")
    assert json.loads(written["Body"].read())["code"] == "provider_rejected"
