"""crun.ai end to end through the local stack: the real handlers, moto server over HTTP, and the
simulator speaking crun's job API (``/crun``) and editing real video."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import Stack, wait_until

pytestmark = pytest.mark.e2e

MODEL = "runway/gen-4-aleph"
CREATE_PATH = "/crun/api/v1/client/job/CreateTask"


@pytest.fixture
def crun_stack(stack_clean: Stack) -> Iterator[Stack]:
    """The stack with an empty request log; crun's settings back to their defaults afterwards."""
    stack_clean.sim.delete("/_sim/requests").raise_for_status()
    yield stack_clean
    stack_clean.sim_config(crun_callback_wrapped=False, mirror_http_status=False)


def run_pair(stack: Stack, stem: str, prompt: str, **extra: Any) -> str:
    stack.put(f"{stem}.mp4", stack.clip)
    sidecar_key = f"{stem}.json"
    stack.put_sidecar(sidecar_key, {"prompt": prompt, "provider": "crun", **extra})
    return sidecar_key


def create_requests(stack: Stack) -> list[dict[str, Any]]:
    return [entry for entry in stack.sim.get("/_sim/requests").json() if entry["provider"] == "crun" and entry["path"].startswith(CREATE_PATH)]


def assert_completed(stack: Stack, sidecar_key: str, folder: str) -> dict[str, Any]:
    job = stack.wait_for_job(sidecar_key)
    assert job["status"] == "COMPLETED", job.get("error")
    prefix = f"{folder}/{job['jobId']}/"
    # crun returns media URLs only: no cover image.
    assert stack.output_keys(f"{folder}/") == [prefix + "job.json", prefix + "result.mp4"]
    manifest = stack.output_json(prefix + "job.json")
    assert (manifest["provider"], manifest["model"]) == ("crun", MODEL)
    assert [entry["state"] for entry in manifest["history"]] == ["RECEIVED", "SUBMITTED", "SUCCEEDED", "COMPLETED"]
    return manifest


def queue_drained(stack: Stack) -> bool:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    counts = stack.sqs.get_queue_attributes(QueueUrl=stack.info["submit_queue_url"], AttributeNames=names)["Attributes"]
    return all(counts[name] == "0" for name in names)


@pytest.mark.parametrize("wrapped", [False, True])
def test_crun_job_completes_from_a_bare_or_wrapped_callback(crun_stack: Stack, unique: str, wrapped: bool) -> None:
    stack = crun_stack
    stack.sim_config(crun_callback_wrapped=wrapped)
    folder = f"crun-{'wrapped' if wrapped else 'bare'}-{unique}"
    key = run_pair(stack, f"incoming/{folder}", f"crun {unique}", aspectRatio="16:9", seed=11)
    manifest = assert_completed(stack, key, folder)
    [task] = stack.sim_tasks(unique)
    assert task["provider"] == "crun"
    assert task["callback_shape"] == ("wrapped" if wrapped else "bare")
    assert [attempt["status"] for attempt in task["callbacks"]] == [200]
    assert manifest["providerTaskId"] == task["taskId"]
    sent = task["request"]
    assert sent["model"] == MODEL
    assert sent["callback_url"].startswith(f"{stack.info['api_url']}/callbacks/crun/{manifest['jobId']}?token=")
    assert {name: sent["input"][name] for name in ("prompt", "aspect_ratio", "seed")} == {"prompt": f"crun {unique}", "aspect_ratio": "16:9", "seed": 11}
    assert sent["input"]["video_url"].startswith(stack.info["s3_endpoint"])
    assert len(create_requests(stack)) == 1


def test_provider_options_reach_the_request_body(crun_stack: Stack, unique: str) -> None:
    stack = crun_stack
    key = run_pair(stack, f"incoming/crun-opts-{unique}", f"opts {unique}", aspectRatio="16:9", providerOptions={"aspect_ratio": "1:1"})
    assert_completed(stack, key, f"crun-opts-{unique}")
    [task] = stack.sim_tasks(unique)
    assert task["request"]["input"]["aspect_ratio"] == "1:1"  # the option overrides the mapped field
    assert set(task["request"]) == {"model", "callback_url", "input"}


def test_a_field_the_models_schema_does_not_permit_fails_at_intake_with_no_create_task(crun_stack: Stack, unique: str) -> None:
    stack = crun_stack
    key = run_pair(stack, f"incoming/crun-bad-opt-{unique}", f"bad opt {unique}", providerOptions={"duration": 5})
    job = stack.wait_for_job(key)
    assert job["status"] == "FAILED"
    error = stack.output_json(f"crun-bad-opt-{unique}/{job['jobId']}/error.json")
    assert (error["code"], error["stage"], error["retryable"]) == ("unsupported_option", "intake", False)
    assert "`duration` (from `providerOptions.duration`)" in error["message"]
    assert "permits: `aspect_ratio`, `img_urls`, `prompt`, `seed`, `video_url`" in error["message"]
    assert create_requests(stack) == []
    assert stack.sim_tasks(unique) == []


def test_an_unaffordable_job_fails_insufficient_credits_and_creates_nothing(crun_stack: Stack, unique: str) -> None:
    stack = crun_stack
    stack.sim_faults([{"fault": "insufficient_credits", "provider": "crun", "match_prompt": unique}])
    key = run_pair(stack, f"incoming/crun-402-{unique}", f"poor {unique}")
    job = stack.wait_for_job(key)
    assert job["status"] == "FAILED"
    error = stack.output_json(f"crun-402-{unique}/{job['jobId']}/error.json")
    assert (error["code"], error["stage"], error["retryable"]) == ("insufficient_credits", "submit", False)
    assert "costs 60 credits and the account has 0" in error["message"]
    assert error["details"] == {"estimatedCredits": 60, "balance": 0}
    assert error["hint"]
    assert stack.output_keys(f"crun-402-{unique}/") == [f"crun-402-{unique}/{job['jobId']}/error.json"]
    wait_until(lambda: queue_drained(stack), 30, "the submit queue to drain (no redelivery pending)")
    estimates = [entry for entry in stack.sim.get("/_sim/requests").json() if entry["provider"] == "crun" and "EstimateTask" in entry["path"]]
    assert len(estimates) == 1  # not retried: the answer was clear
    assert create_requests(stack) == []  # nothing created, nothing spent
    assert stack.sim_tasks(unique) == []


def test_rate_limit_then_success_submits_once_and_completes(crun_stack: Stack, unique: str) -> None:
    stack = crun_stack
    stack.sim_faults([{"fault": "submit_429", "provider": "crun", "match_prompt": unique, "count": 1}])
    key = run_pair(stack, f"incoming/crun-429-{unique}", f"busy {unique}")
    assert_completed(stack, key, f"crun-429-{unique}")
    assert len(stack.sim_tasks(unique)) == 1
    assert [(entry["http_status"], entry["code"]) for entry in create_requests(stack)] == [(429, 429), (200, 200)]


def test_generation_failure_fails_the_job_with_crun_message(crun_stack: Stack, unique: str) -> None:
    stack = crun_stack
    message = "Generation Failed - the prompt was refused by content moderation"
    stack.sim_faults([{"fault": "generation_failure", "provider": "crun", "match_prompt": unique, "msg": message}])
    stack.sim_config(crun_callback_wrapped=True)
    key = run_pair(stack, f"incoming/crun-501-{unique}", f"refused {unique}")
    job = stack.wait_for_job(key)
    assert job["status"] == "FAILED"
    error = stack.output_json(f"crun-501-{unique}/{job['jobId']}/error.json")
    assert (error["code"], error["stage"], error["message"]) == ("generation_failed", "provider", message)
    assert error["details"] == {"providerCode": 501}
    assert len(stack.sim_tasks(unique)) == 1


def test_option_crun_cannot_honour_is_refused_before_submission(crun_stack: Stack, unique: str) -> None:
    stack = crun_stack
    key = run_pair(stack, f"incoming/crun-opt-{unique}", f"opt {unique}", watermark="mine")
    job = stack.wait_for_job(key)
    error = stack.output_json(f"crun-opt-{unique}/{job['jobId']}/error.json")
    assert error["code"] == "unsupported_option"
    assert "`watermark`" in error["message"] and "`crun`" in error["message"]
    assert create_requests(stack) == []


def test_no_crun_key_reaches_the_logs(stack: Stack) -> None:
    """Runs last in this module: every crun job above has logged by now."""
    logs = "".join(path.read_text(errors="replace") for path in stack.workdir.glob("*.log"))
    assert "submitted" in logs
    assert "sim-crun-key" not in logs
