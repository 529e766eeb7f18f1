"""The reconciler through the local stack: it runs every second here, with short grace periods."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import Stack, open_stack

pytestmark = pytest.mark.e2e

DEADLINE_SECONDS = 12


@pytest.fixture(scope="module")
def fast_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = {
        "CALLBACK_GRACE_SECONDS": "1",
        "PAIRING_TIMEOUT_SECONDS": "3",
        "JOB_DEADLINE_SECONDS": str(DEADLINE_SECONDS),
        "FINALIZE_GRACE_SECONDS": "2",
    }
    args = ["--schedule-interval", "1"]
    for name, value in settings.items():
        args += ["--env", f"{name}={value}"]
    with open_stack(tmp_path_factory.mktemp("reconcile"), *args) as opened:
        yield opened
        opened.sim.delete("/_sim/faults")


def test_dropped_callback_is_settled_by_polling(fast_stack: Stack, unique: str) -> None:
    stack = fast_stack
    stack.sim_faults([{"fault": "drop_callback", "match_prompt": unique}])
    stack.put(f"incoming/dropped-{unique}.mp4", stack.clip)
    stack.put_sidecar(f"incoming/dropped-{unique}.json", {"prompt": f"dropped {unique}"})
    job = stack.wait_for_job(f"incoming/dropped-{unique}.json", timeout=60)
    assert job["status"] == "COMPLETED", job.get("error")
    (task,) = stack.sim_tasks(unique)
    assert task["callbacks"] == []  # no callback ever reached us: the poll did it
    assert "lastPolledAt" in job or [entry["state"] for entry in job["history"]] == ["RECEIVED", "SUBMITTED", "SUCCEEDED", "COMPLETED"]
    assert stack.output_keys(f"dropped-{unique}/{job['jobId']}/")


def test_video_that_never_arrives_fails_with_pairing_timeout(fast_stack: Stack, unique: str) -> None:
    stack = fast_stack
    stack.put_sidecar(f"incoming/lonely-{unique}.json", {"prompt": f"lonely {unique}"})
    job = stack.wait_for_job(f"incoming/lonely-{unique}.json", timeout=60)
    assert job["status"] == "FAILED"
    error = stack.output_json(f"lonely-{unique}/{job['jobId']}/error.json")
    assert error["code"] == "pairing_timeout"
    assert "did not arrive within 3 s" in error["message"]
    assert f"`incoming/lonely-{unique}.<mp4|mov|webm|avi|m4v>`" in error["message"]  # says what it waited for
    assert stack.sim_tasks(unique) == []


def test_job_the_provider_never_finishes_fails_at_its_deadline(fast_stack: Stack, unique: str) -> None:
    stack = fast_stack
    stack.sim_config(hold=True)
    try:
        stack.put(f"incoming/stuck-{unique}.mp4", stack.clip)
        stack.put_sidecar(f"incoming/stuck-{unique}.json", {"prompt": f"stuck {unique}"})
        job = stack.wait_for_job(f"incoming/stuck-{unique}.json", timeout=DEADLINE_SECONDS + 45)
    finally:
        stack.sim_config(hold=False)
    assert job["status"] == "FAILED"
    error = stack.output_json(f"stuck-{unique}/{job['jobId']}/error.json")
    assert error["code"] == "deadline_exceeded"
    assert error["retryable"] is True
    assert len(stack.sim_tasks(unique)) == 1  # polled, never submitted again
