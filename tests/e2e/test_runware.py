"""End to end with Runware: the local stack, the simulator speaking Runware's protocol, real video."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pytest

from local.media import duration_seconds, ffmpeg, frame_rgb, make_clip, mean_abs_difference

from .conftest import Stack

pytestmark = pytest.mark.e2e


def red_png() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "red.png")
        ffmpeg("-f", "lavfi", "-i", "color=red:size=64x64", "-frames:v", "1", str(path))
        return path.read_bytes()


def start(stack: Stack, stem: str, document: dict[str, Any], clip: bytes | None = None) -> str:
    stack.put(f"{stem}.mp4", clip if clip is not None else stack.clip)
    stack.put_sidecar(f"{stem}.json", {"provider": "runware", **document})
    return f"{stem}.json"


def runware_requests(stack: Stack) -> list[dict[str, Any]]:
    return [entry for entry in stack.sim.get("/_sim/requests").json() if entry["provider"] == "runware"]


def completed(stack: Stack, key: str, folder: str) -> tuple[dict[str, Any], str]:
    job = stack.wait_for_job(key)
    assert job["status"] == "COMPLETED", job.get("error")
    return job, f"{folder}/{job['jobId']}/"


def test_aleph_2_job_with_a_frame_image_key_completes(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    stack.put(f"incoming/rw2-{unique}-frame.png", red_png())
    document = {"prompt": f"aleph2 {unique}", "frameImages": [{"image": f"rw2-{unique}-frame.png", "frame": "first"}], "seed": 3}
    key = start(stack, f"incoming/rw2-{unique}", document)
    job, prefix = completed(stack, key, f"rw2-{unique}")
    assert stack.output_keys(prefix) == [prefix + "job.json", prefix + "result.mp4"]
    [task] = stack.sim_tasks(unique)
    sent = task["request"]
    assert sent["model"] == "runway:aleph@2.0"  # the default model
    assert sent["includeCost"] is True
    assert sent["deliveryMethod"] == "async"
    assert sent["webhookURL"].startswith(f"{stack.info['api_url']}/callbacks/runware/{job['jobId']}?token=")
    [frame] = sent["inputs"]["frameImages"]
    assert frame["frame"] == "first"
    assert f"rw2-{unique}-frame.png" in frame["image"]
    assert "X-Amz-Signature=" in frame["image"]  # the key went out as a presigned URL
    manifest = stack.output_json(prefix + "job.json")
    assert manifest["provider"] == "runware"
    assert manifest["model"] == "runway:aleph@2.0"
    assert manifest["providerTaskId"] == sent["taskUUID"] == task["taskId"]
    assert manifest["cost"] == task["results"][0]["cost"] > 0
    with tempfile.TemporaryDirectory() as folder:
        source, result = Path(folder, "in.mp4"), Path(folder, "out.mp4")
        source.write_bytes(stack.clip)
        result.write_bytes(stack.output_bytes(prefix + "result.mp4"))
        assert duration_seconds(result) == pytest.approx(duration_seconds(source), abs=0.3)  # the whole clip
        assert mean_abs_difference(frame_rgb(source), frame_rgb(result)) > 30


def test_aleph_1_job_with_two_results(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    document = {"prompt": f"aleph1 {unique}", "model": "runway:2@1", "numberResults": 2, "aspectRatio": "4:3"}
    key = start(stack, f"incoming/rw1-{unique}", document)
    _job, prefix = completed(stack, key, f"rw1-{unique}")
    assert stack.output_keys(prefix) == [prefix + "job.json", prefix + "result-1.mp4", prefix + "result-2.mp4"]
    [task] = stack.sim_tasks(unique)
    assert task["request"]["numberResults"] == 2
    assert (task["request"]["width"], task["request"]["height"]) == (1104, 832)
    assert len(task["callbacks"]) == 2  # one webhook per result
    manifest = stack.output_json(prefix + "job.json")
    assert manifest["cost"] == pytest.approx(sum(result["cost"] for result in task["results"]))
    assert {output["key"] for output in manifest["outputs"]} == {prefix + "result-1.mp4", prefix + "result-2.mp4"}
    assert [entry["state"] for entry in manifest["history"]] == ["RECEIVED", "SUBMITTED", "SUCCEEDED", "COMPLETED"]
    with tempfile.TemporaryDirectory() as folder:
        first, second = Path(folder, "1.mp4"), Path(folder, "2.mp4")
        first.write_bytes(stack.output_bytes(prefix + "result-1.mp4"))
        second.write_bytes(stack.output_bytes(prefix + "result-2.mp4"))
        assert duration_seconds(first) <= 5.1  # Aleph 1 edits the first 5 s
        assert mean_abs_difference(frame_rgb(first), frame_rgb(second)) > 5  # two variations, not one copied


def test_webm_output_is_a_webm_that_decodes(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    key = start(stack, f"incoming/rwwebm-{unique}", {"prompt": f"webm {unique}", "outputFormat": "WEBM", "outputQuality": 60})
    _job, prefix = completed(stack, key, f"rwwebm-{unique}")
    assert stack.output_keys(prefix) == [prefix + "job.json", prefix + "result.webm"]
    head = stack.s3.head_object(Bucket=stack.info["output_bucket"], Key=prefix + "result.webm")
    assert head["ContentType"] == "video/webm"
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder, "out.webm")
        result.write_bytes(stack.output_bytes(prefix + "result.webm"))
        assert result.read_bytes()[:4] == b"\x1a\x45\xdf\xa3"  # EBML: a real WEBM, not a renamed MP4
        assert duration_seconds(result) > 6
        assert len(frame_rgb(result)) == 64 * 36 * 3


def refused_before_submission(stack: Stack, key: str, folder: str) -> dict[str, Any]:
    job = stack.wait_for_job(key)
    assert job["status"] == "FAILED"
    assert "submission" not in job
    prefix = f"{folder}/{job['jobId']}/"
    error = stack.output_json(prefix + "error.json")
    assert error["stage"] == "intake"
    assert error["hint"]
    assert stack.output_keys(prefix) == [prefix + "error.json"]
    assert runware_requests(stack) == []
    return error


def test_a_40_second_video_for_aleph_2_fails_before_submission(stack_clean: Stack, unique: str, tmp_path: Path) -> None:
    stack = stack_clean
    long_clip = make_clip(tmp_path / "long.mp4", seconds=40, size="160x90", rate=12).read_bytes()
    stack.sim.delete("/_sim/requests")
    key = start(stack, f"incoming/rwlong-{unique}", {"prompt": f"long {unique}"}, clip=long_clip)
    error = refused_before_submission(stack, key, f"rwlong-{unique}")
    assert error["code"] == "video_duration"
    assert re.search(r"the video is 40\.\d\d s long; model `runway:aleph@2.0` edits videos of 2 to 30 seconds", error["message"])


def test_an_invalid_width_height_pair_fails_before_submission(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    stack.sim.delete("/_sim/requests")
    document = {"prompt": f"size {unique}", "model": "runway:2@1", "width": 1000, "height": 700}
    key = start(stack, f"incoming/rwsize-{unique}", document)
    error = refused_before_submission(stack, key, f"rwsize-{unique}")
    assert error["code"] == "unsupported_option"
    assert "1000x700 is not a size model `runway:2@1` makes" in error["message"]
    assert "1280x720" in error["message"]


def test_insufficient_balance_fails_the_job_once_without_retrying(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    stack.sim.delete("/_sim/requests")
    stack.sim_faults([{"fault": "insufficient_credits", "provider": "runware", "match_prompt": unique}])
    key = start(stack, f"incoming/rwbroke-{unique}", {"prompt": f"broke {unique}"})
    job = stack.wait_for_job(key)
    assert job["status"] == "FAILED"
    error = stack.output_json(f"rwbroke-{unique}/{job['jobId']}/error.json")
    assert error["code"] == "provider_rejected"
    assert error["stage"] == "submit"
    assert error["retryable"] is False
    assert "insufficientCredits" in error["message"]
    assert [(entry["http_status"], entry["code"]) for entry in runware_requests(stack)] == [(402, "insufficientCredits")]
    assert stack.sim_tasks(unique) == []


def test_no_runware_key_or_token_reaches_the_logs(stack: Stack) -> None:
    """Runs last in this module: the jobs above have logged by now."""
    logs = "".join(path.read_text(errors="replace") for path in stack.workdir.glob("*.log"))
    assert "runware" in logs
    assert "sim-runware-key" not in logs
    assert not re.findall(r"token=(?!\*)[A-Za-z0-9_\-]{16,}", logs)


def test_duplicated_webhooks_of_a_two_result_job_give_two_results(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    stack.sim_faults([{"fault": "duplicate_callback", "provider": "runware", "match_prompt": unique}])
    key = start(stack, f"incoming/rwdup-{unique}", {"prompt": f"dup {unique}", "numberResults": 2, "outputFormat": "MOV"})
    _job, prefix = completed(stack, key, f"rwdup-{unique}")
    assert stack.output_keys(prefix) == [prefix + "job.json", prefix + "result-1.mov", prefix + "result-2.mov"]
    [task] = stack.sim_tasks(unique)
    assert len(task["callbacks"]) == 4  # every result's webhook came twice
    manifest = stack.output_json(prefix + "job.json")
    assert manifest["cost"] == pytest.approx(sum(result["cost"] for result in task["results"]))  # each result counted once
