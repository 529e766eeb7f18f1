"""Folder defaults and variants through intake against moto server (real HTTP) and a small
kie-protocol provider that counts the tasks it was asked to make."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from aleph_cli import jobs as cli_jobs
from aleph_cli.errors import CliError
from aleph_cli.stack import StackInfo
from aleph_pipeline.finalize import finalize_job
from aleph_pipeline.intake import handle_object_created
from aleph_pipeline.jobs import JobState, JobStore
from aleph_pipeline.keys import variant_job_id
from aleph_pipeline.storage import head

from .test_promise_under_faults import MP4, FakeKie, error_json, job, kie, upload_pair  # noqa: F401  (kie: the fixture)
from .test_reconcile import indexed  # noqa: F401  (the fixture kie builds on)


@pytest.fixture
def team(kie: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    """A folder of its own under the input prefix (the input bucket is shared by the tests, and a
    defaults file left behind would apply to other tests' sidecars)."""
    name = f"team-{uuid.uuid4().hex[:8]}"
    return {**kie, "name": name, "folder": f"incoming/{name}", "defaults": f"incoming/{name}/_defaults.json", "sub": f"incoming/{name}/sub/_defaults.json"}


def put_json(aws: dict[str, Any], key: str, document: Any) -> None:
    aws["s3"].put_object(Bucket=aws["input"], Key=key, Body=json.dumps(document).encode())


def job_items(aws: dict[str, Any]) -> list[dict[str, Any]]:
    return [item for item in aws["table"].scan(ConsistentRead=True)["Items"] if "status" in item]


def variant_ids(aws: dict[str, Any], key: str, count: int) -> list[str]:
    info = head(aws["input"], key)
    assert info is not None
    return [variant_job_id(aws["input"], key, info.version_marker, index) for index in range(count)]


def test_intake_merges_the_folder_defaults_nearest_first(team: dict[str, Any]) -> None:
    put_json(team, team["defaults"], {"aspectRatio": "16:9", "seed": 7, "watermark": "team"})
    put_json(team, team["sub"], {"aspectRatio": "9:16"})
    job_id = upload_pair(team, f"{team['folder']}/sub/shot", {"prompt": "snow", "provider": "kie", "watermark": "mine"})
    handle_object_created(team["input"], f"{team['folder']}/sub/shot.json")
    assert len(FakeKie.tasks) == 1
    sent = FakeKie.tasks[0]["request"]
    assert (sent["prompt"], sent["aspectRatio"], sent["seed"], sent["waterMark"]) == ("snow", "9:16", 7, "mine")
    submitted = job(job_id)
    assert submitted.state == JobState.SUBMITTED
    assert submitted.sidecar_document == {"aspectRatio": "9:16", "seed": 7, "watermark": "mine", "prompt": "snow", "provider": "kie"}
    assert submitted.item["fieldSources"] == {
        "aspectRatio": team["sub"],
        "seed": team["defaults"],
        "watermark": "sidecar",
        "prompt": "sidecar",
        "provider": "sidecar",
    }


def test_a_defaults_upload_is_ignored_not_a_job(team: dict[str, Any]) -> None:
    put_json(team, team["defaults"], {"aspectRatio": "16:9"})
    handle_object_created(team["input"], team["defaults"])
    assert job_items(team) == []


def test_invalid_defaults_fail_the_job_naming_the_file(team: dict[str, Any]) -> None:
    team["s3"].put_object(Bucket=team["input"], Key=team["defaults"], Body=b'{"aspectRatio": "16:9",}')
    job_id = upload_pair(team, f"{team['folder']}/sub/shot")
    handle_object_created(team["input"], f"{team['folder']}/sub/shot.json")
    assert FakeKie.tasks == []
    error = error_json(team, job_id)
    assert error["code"] == "invalid_json"
    assert f"the folder defaults `{team['defaults']}` is not valid JSON" in error["message"]


def test_a_default_the_provider_cannot_honour_names_its_file(team: dict[str, Any]) -> None:
    put_json(team, team["defaults"], {"numberResults": 2})
    job_id = upload_pair(team, f"{team['folder']}/shot")
    handle_object_created(team["input"], f"{team['folder']}/shot.json")
    error = error_json(team, job_id)
    assert error["code"] == "unsupported_option"
    assert f"(folder defaults: `numberResults` from `{team['defaults']}`)" in error["message"]


def test_a_variants_sidecar_makes_one_job_per_prompt_once_even_with_the_event_twice(team: dict[str, Any]) -> None:
    put_json(team, team["defaults"], {"aspectRatio": "16:9"})
    upload_pair(team, f"{team['folder']}/shot", {"prompts": ["snow", "rain"], "provider": "kie"})
    for attempt in (1, 2):  # a duplicate S3 event
        handle_object_created(team["input"], f"{team['folder']}/shot.json", receive_count=attempt)
    ids = variant_ids(team, f"{team['folder']}/shot.json", 2)
    assert sorted(item["jobId"] for item in job_items(team)) == sorted(ids)
    assert sorted(task["request"]["prompt"] for task in FakeKie.tasks) == ["rain", "snow"]  # one task each
    first, second = job(ids[0]), job(ids[1])
    assert [first.state, second.state] == [JobState.SUBMITTED, JobState.SUBMITTED]
    assert (first.sidecar_document or {})["prompt"] == "snow" and (second.sidecar_document or {})["prompt"] == "rain"
    assert first.output_prefix == f"{team['name']}/shot/{ids[0]}/" and second.output_prefix == f"{team['name']}/shot/{ids[1]}/"
    assert second.item["fieldSources"]["aspectRatio"] == team["defaults"]


def test_variants_wait_for_their_video_and_each_completes(team: dict[str, Any]) -> None:
    # A stem of its own: the input bucket is shared by the tests, and this video must arrive last.
    put_json(team, f"{team['folder']}/shot.json", {"prompts": ["snow", "rain"], "provider": "kie"})
    handle_object_created(team["input"], f"{team['folder']}/shot.json")  # the video is not there yet
    ids = variant_ids(team, f"{team['folder']}/shot.json", 2)
    assert [job(job_id).state for job_id in ids] == [JobState.RECEIVED, JobState.RECEIVED]
    team["s3"].put_object(Bucket=team["input"], Key=f"{team['folder']}/shot.mp4", Body=MP4)
    handle_object_created(team["input"], f"{team['folder']}/shot.mp4")
    assert len(FakeKie.tasks) == 2
    by_prompt = {task["request"]["prompt"]: task["taskId"] for task in FakeKie.tasks}
    for job_id, prompt in zip(ids, ("snow", "rain"), strict=True):
        JobStore().mark_succeeded(job_id, (f"{team['base']}/files/{by_prompt[prompt]}.mp4",), None, None, None)
        finalize_job(job_id)
        done = job(job_id)
        assert done.state == JobState.COMPLETED
        manifest = json.loads(team["s3"].get_object(Bucket=team["output"], Key=done.output_prefix + "job.json")["Body"].read())
        assert manifest["sidecar"]["prompt"] == prompt
        assert manifest["fieldSources"] == {"provider": "sidecar", "prompt": "sidecar"}
        assert manifest["variant"] == {"index": ids.index(job_id), "count": 2}


def test_too_many_prompts_is_one_failed_job_naming_the_limit(team: dict[str, Any]) -> None:
    job_id = upload_pair(team, f"{team['folder']}/shot", {"prompts": [f"p{i}" for i in range(21)], "provider": "kie"})
    handle_object_created(team["input"], f"{team['folder']}/shot.json")
    assert [item["jobId"] for item in job_items(team)] == [job_id]
    assert "at most 20 are accepted" in error_json(team, job_id)["message"]
    assert FakeKie.tasks == []


def test_the_cli_uploads_a_variants_sidecar_and_lists_its_jobs_in_prompt_order(team: dict[str, Any], tmp_path: Path) -> None:
    stack = StackInfo(
        "local",
        team["input"],
        "incoming/",
        team["output"],
        team["table_name"],
        region="us-east-1",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        credentials=("test", "test"),
    )
    video = tmp_path / "shot.mp4"
    video.write_bytes(MP4)
    submitted = cli_jobs.upload_pair(stack, video, {"prompts": ["snow", "rain", "fog"], "provider": "kie"}, folder=team["name"])
    assert len(submitted.job_ids) == 3 and submitted.job_id == submitted.job_ids[0]
    handle_object_created(team["input"], submitted.sidecar_key)
    listed = cli_jobs.sidecar_jobs(stack, submitted.sidecar_key)
    assert [entry["jobId"] for entry in listed] == list(submitted.job_ids)
    assert [json.loads(entry["sidecarJson"])["prompt"] for entry in listed] == ["snow", "rain", "fog"]
    with pytest.raises(CliError, match="at most 20 are accepted"):
        cli_jobs.sidecar_job_ids(team["input"], submitted.sidecar_key, "v", {"prompts": ["p"] * 21})
