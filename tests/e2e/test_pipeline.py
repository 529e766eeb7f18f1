"""End to end through the local stack: S3 and SQS and DynamoDB on moto server over HTTP, the real
handlers fed by the dispatcher, the simulator speaking kie.ai/apikley and editing real video."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest

from local.media import duration_seconds, frame_rgb, mean_abs_difference

from .conftest import Stack, wait_until

pytestmark = pytest.mark.e2e


def run_pair(stack: Stack, stem: str, prompt: str, *, video_first: bool = True, ext: str = "mp4", sidecar_ext: str = "json", extra: dict | None = None) -> str:
    sidecar_key = f"{stem}.{sidecar_ext}"
    video = (f"{stem}.{ext}", stack.clip)
    sidecar = (sidecar_key, json.dumps({"prompt": prompt, **(extra or {})}).encode())
    for key, body in (video, sidecar) if video_first else (sidecar, video):
        stack.put(key, body)
    return sidecar_key


def assert_completed(stack: Stack, sidecar_key: str, output_folder: str) -> dict:
    job = stack.wait_for_job(sidecar_key)
    assert job["status"] == "COMPLETED", job.get("error")
    prefix = f"{output_folder}/{job['jobId']}/"
    assert stack.output_keys(f"{output_folder}/") == [prefix + "cover.png", prefix + "job.json", prefix + "result.mp4"]
    return job


def test_video_then_sidecar_yields_an_edited_five_second_result(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    key = run_pair(stack, f"incoming/team-a/shot-{unique}", f"snow {unique}", extra={"aspectRatio": "16:9", "seed": 7, "metadata": {"take": 3}})
    job = assert_completed(stack, key, f"team-a/shot-{unique}")
    prefix = f"team-a/shot-{unique}/{job['jobId']}/"
    with tempfile.TemporaryDirectory() as folder:
        source, result = Path(folder, "in.mp4"), Path(folder, "out.mp4")
        source.write_bytes(stack.clip)
        result.write_bytes(stack.output_bytes(prefix + "result.mp4"))
        assert duration_seconds(source) > 6.5
        assert duration_seconds(result) <= 5.1  # the provider edits the first 5 s only
        assert mean_abs_difference(frame_rgb(source), frame_rgb(result)) > 30  # visibly edited
    manifest = stack.output_json(prefix + "job.json")
    assert manifest["jobId"] == job["jobId"]
    assert manifest["provider"] == "kie"
    assert manifest["model"] == "aleph"
    assert manifest["sidecar"] == {"prompt": f"snow {unique}", "aspectRatio": "16:9", "seed": 7, "metadata": {"take": 3}}
    assert manifest["metadata"] == {"take": 3}
    assert manifest["sidecarKey"] == key
    assert manifest["source"]["key"] == f"incoming/team-a/shot-{unique}.mp4"
    assert manifest["source"]["size"] == len(stack.clip)
    assert [entry["state"] for entry in manifest["history"]] == ["RECEIVED", "SUBMITTED", "SUCCEEDED", "COMPLETED"]
    assert {output["key"] for output in manifest["outputs"]} == {prefix + "result.mp4", prefix + "cover.png"}
    assert manifest["providerTaskId"] == stack.sim_tasks(unique)[0]["taskId"]
    sent = stack.sim_tasks(unique)[0]["request"]
    assert sent["aspectRatio"] == "16:9"
    assert sent["seed"] == 7
    assert "metadata" not in sent


def test_sidecar_then_video(stack_clean: Stack, unique: str) -> None:
    key = run_pair(stack_clean, f"incoming/late-{unique}", f"rain {unique}", video_first=False)
    assert_completed(stack_clean, key, f"late-{unique}")
    assert len(stack_clean.sim_tasks(unique)) == 1


def test_upper_case_extensions(stack_clean: Stack, unique: str) -> None:
    key = run_pair(stack_clean, f"incoming/UP-{unique}", f"fog {unique}", ext="MP4", sidecar_ext="JSON")
    assert_completed(stack_clean, key, f"UP-{unique}")


def test_keys_with_spaces_and_plus(stack_clean: Stack, unique: str) -> None:
    key = run_pair(stack_clean, f"incoming/team b/my+shot {unique}", f"dusk {unique}", video_first=False)
    assert_completed(stack_clean, key, f"team b/my+shot {unique}")


def test_same_event_three_times_submits_once(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    stack.sim_config(hold=True)  # keep the task running while the duplicates arrive
    key = run_pair(stack, f"incoming/dup-{unique}", f"dup {unique}")
    job = stack.wait_for_job(key, {"SUBMITTED"})
    event = stack.s3_event(key)
    for _ in range(2):
        stack.sqs.send_message(QueueUrl=stack.info["submit_queue_url"], MessageBody=event)

    def queue_drained() -> bool:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        counts = stack.sqs.get_queue_attributes(QueueUrl=stack.info["submit_queue_url"], AttributeNames=names)["Attributes"]
        return all(counts[name] == "0" for name in names)

    wait_until(queue_drained, 30, "the duplicate events to be handled")
    stack.sim_config(hold=False)
    assert_completed(stack, key, f"dup-{unique}")
    assert len(stack.sim_tasks(unique)) == 1
    assert stack.job_for(key)["jobId"] == job["jobId"]  # type: ignore[index]


def test_invalid_sidecar_fails_with_error_json_and_no_submission(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    stack.put(f"incoming/bad-{unique}.mp4", stack.clip)
    stack.put_sidecar(f"incoming/bad-{unique}.json", {"prompt": f"bad {unique}", "colour": "red"})
    job = stack.wait_for_job(f"incoming/bad-{unique}.json")
    assert job["status"] == "FAILED"
    error = stack.output_json(f"bad-{unique}/{job['jobId']}/error.json")
    assert error["code"] == "invalid_sidecar"
    assert "unknown field `colour`" in error["message"]
    assert error["stage"] == "intake"
    assert error["hint"]
    assert stack.output_keys(f"bad-{unique}/") == [f"bad-{unique}/{job['jobId']}/error.json"]
    requests = stack.sim.get("/_sim/requests").json()
    assert not [request for request in requests if unique in json.dumps(request)]


def test_option_the_provider_cannot_honour_is_refused_before_submission(stack_clean: Stack, unique: str) -> None:
    key = run_pair(stack_clean, f"incoming/opt-{unique}", f"opt {unique}", extra={"numberResults": 2})
    job = stack_clean.wait_for_job(key)
    error = stack_clean.output_json(f"opt-{unique}/{job['jobId']}/error.json")
    assert error["code"] == "unsupported_option"
    assert "`numberResults`" in error["message"]
    assert stack_clean.sim_tasks(unique) == []


def test_callback_with_wrong_or_missing_token_is_refused(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    stack.sim_config(hold=True)
    key = run_pair(stack, f"incoming/forge-{unique}", f"forge {unique}")
    job = stack.wait_for_job(key, {"SUBMITTED"})
    body = {"code": 200, "msg": "success", "data": {"result_video_url": "http://127.0.0.1:1/x.mp4"}, "taskId": job["providerTaskId"]}
    path = f"/callbacks/kie/{job['jobId']}"
    assert stack.api.post(path, params={"token": "wrong"}, json=body).status_code == 401
    assert stack.api.post(path, json=body).status_code == 401
    assert stack.api.post(f"/callbacks/kie/{'0' * 32}", params={"token": "x"}, json=body).status_code == 404
    after = stack.job_for(key)
    assert after is not None
    assert after["status"] == "SUBMITTED"
    assert after["history"] == job["history"]
    stack.sim_config(hold=False)
    assert_completed(stack, key, f"forge-{unique}")


@pytest.mark.parametrize("shape", ["A", "B"])
def test_both_kie_callback_shapes_complete_a_job(stack_clean: Stack, unique: str, shape: str) -> None:
    stack_clean.sim_config(callback_shape=shape)
    key = run_pair(stack_clean, f"incoming/shape-{shape}-{unique}", f"shape {unique}")
    assert_completed(stack_clean, key, f"shape-{shape}-{unique}")
    assert stack_clean.sim_tasks(unique)[0]["callback_shape"] == shape


def test_apikley_job_completes_through_its_own_base_url(stack_clean: Stack, unique: str) -> None:
    key = run_pair(stack_clean, f"incoming/apikley-{unique}", f"apikley {unique}", extra={"provider": "apikley"})
    job = assert_completed(stack_clean, key, f"apikley-{unique}")
    tasks = stack_clean.sim_tasks(unique)
    assert [task["provider"] for task in tasks] == ["apikley"]
    assert stack_clean.output_json(f"apikley-{unique}/{job['jobId']}/job.json")["provider"] == "apikley"


def test_provider_failure_callback_fails_the_job_with_its_message(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    message = "Your prompt was caught by our AI moderator. Please adjust it and try again!"
    stack.sim_faults([{"fault": "generation_failure", "match_prompt": unique, "msg": message}])
    key = run_pair(stack, f"incoming/fail-{unique}", f"fail {unique}")
    job = stack.wait_for_job(key)
    assert job["status"] == "FAILED"
    error = stack.output_json(f"fail-{unique}/{job['jobId']}/error.json")
    assert error["code"] == "generation_failed"
    assert error["message"] == message
    assert error["stage"] == "provider"
    assert stack.output_keys(f"fail-{unique}/") == [f"fail-{unique}/{job['jobId']}/error.json"]
    assert len(stack.sim_tasks(unique)) == 1


def test_no_key_or_callback_token_reaches_the_logs(stack: Stack) -> None:
    """Runs last in this module: every job above has logged by now."""
    logs = "".join(path.read_text(errors="replace") for path in stack.workdir.glob("*.log"))
    assert "submitted" in logs  # the handlers' own log lines are here
    for secret in ("sim-kie-key", "sim-apikley-key"):
        assert secret not in logs
    assert not re.findall(r"token=(?!\*)[A-Za-z0-9_\-]{16,}", logs)
