"""InputCleanup=delete through the local stack: a completed job's sidecar and video are deleted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import Stack, open_stack, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def deleting_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The parameter as `sam deploy --parameter-overrides InputCleanup=delete` would give it.
    with open_stack(tmp_path_factory.mktemp("cleanup-stack"), "--parameter", "InputCleanup=delete") as opened:
        yield opened


def input_keys(stack: Stack, prefix: str) -> list[str]:
    listed = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix)
    return sorted(entry["Key"] for entry in listed.get("Contents", []))


def test_a_completed_job_s_inputs_are_deleted(deleting_stack: Stack) -> None:
    stack = deleting_stack
    assert stack.info["function_env"]["finalize"]["INPUT_CLEANUP"] == "delete"  # from the template's parameter
    stem = f"{stack.prefix}cleanup/shot"
    stack.put(f"{stem}.mp4", stack.clip)
    assert input_keys(stack, stem) == [f"{stem}.mp4"]
    stack.put_sidecar(f"{stem}.json", {"prompt": "make it snow"})

    job = stack.wait_for_job(f"{stem}.json")
    assert job["status"] == "COMPLETED", job.get("error")
    # Finalize deletes the inputs just after its COMPLETED write.
    wait_until(lambda: input_keys(stack, stem) == [], 15, f"the inputs below {stem} to be deleted")
    outputs = stack.output_keys(job["outputPrefix"])
    assert job["outputPrefix"] + "job.json" in outputs
    assert any(key.endswith(".mp4") for key in outputs)
