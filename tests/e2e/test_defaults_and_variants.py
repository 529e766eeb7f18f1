"""Folder defaults and variants end to end through the local stack: a folder's `_defaults.json`
and a two-prompt sidecar make two jobs that each complete, with their merged sidecar and each
field's source in job.json."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import TERMINAL, Stack, wait_until

pytestmark = pytest.mark.e2e


def jobs_of(stack: Stack, sidecar_key: str) -> list[dict[str, Any]]:
    items = stack.table.scan(FilterExpression="sidecarKey = :key", ExpressionAttributeValues={":key": sidecar_key}, ConsistentRead=True)["Items"]
    return sorted(items, key=lambda item: int(item.get("variantIndex", 0)))


def wait_for_jobs(stack: Stack, sidecar_key: str, count: int, timeout: float = 120) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def finished() -> bool:
        found[:] = jobs_of(stack, sidecar_key)
        return len(found) == count and all(job["status"] in TERMINAL for job in found)

    try:
        wait_until(finished, timeout, f"{count} finished jobs for {sidecar_key}")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (found: {[(job['jobId'], job['status'], job.get('error')) for job in found]})") from None
    return found


def test_folder_defaults_and_two_prompts_make_two_completed_jobs(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    folder = f"incoming/team-{unique}"
    defaults_key = f"{folder}/_defaults.json"
    stack.put_sidecar(defaults_key, {"aspectRatio": "16:9", "seed": 7, "metadata": {"team": unique}})
    stack.put(f"{folder}/shots/shot.mp4", stack.clip)
    sidecar_key = f"{folder}/shots/shot.json"
    prompts = [f"snow {unique}", f"rain {unique}"]
    stack.put_sidecar(sidecar_key, {"prompts": prompts, "seed": 9})
    # The same sidecar event again: no new jobs, no second task.
    stack.sqs.send_message(QueueUrl=stack.info["submit_queue_url"], MessageBody=stack.s3_event(sidecar_key))

    jobs = wait_for_jobs(stack, sidecar_key, 2)
    assert [job["status"] for job in jobs] == ["COMPLETED", "COMPLETED"], [job.get("error") for job in jobs]
    assert len({job["jobId"] for job in jobs}) == 2
    tasks = stack.sim_tasks(unique)
    assert sorted(task["request"]["prompt"] for task in tasks) == sorted(prompts)  # one task per prompt
    for index, job in enumerate(jobs):
        prefix = f"team-{unique}/shots/shot/{job['jobId']}/"
        assert stack.output_keys(prefix) == [prefix + "cover.png", prefix + "job.json", prefix + "result.mp4"]
        manifest = stack.output_json(prefix + "job.json")
        assert manifest["sidecar"] == {"aspectRatio": "16:9", "seed": 9, "metadata": {"team": unique}, "prompt": prompts[index]}
        assert manifest["fieldSources"] == {"aspectRatio": defaults_key, "seed": "sidecar", "metadata": defaults_key, "prompt": "sidecar"}
        assert manifest["variant"] == {"index": index, "count": 2}
        assert manifest["metadata"] == {"team": unique}
    assert jobs_of(stack, defaults_key) == []  # the defaults upload is no job


def test_invalid_defaults_fail_the_job_naming_the_defaults_file(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    defaults_key = f"incoming/bad-defaults-{unique}/_defaults.json"
    stack.put_sidecar(defaults_key, {"aspectRatio": "16:9", "colour": "red"})
    stack.put(f"incoming/bad-defaults-{unique}/shot.mp4", stack.clip)
    sidecar_key = f"incoming/bad-defaults-{unique}/shot.json"
    stack.put_sidecar(sidecar_key, {"prompt": f"snow {unique}"})
    [job] = wait_for_jobs(stack, sidecar_key, 1)
    assert job["status"] == "FAILED"
    error = stack.output_json(f"bad-defaults-{unique}/shot/{job['jobId']}/error.json")
    assert error["code"] == "invalid_sidecar"
    assert f"the folder defaults `{defaults_key}`: unknown field `colour`" in error["message"]
    assert stack.sim_tasks(unique) == []
