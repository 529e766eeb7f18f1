"""End to end through the local stack: Runway (polling only), Replicate (signed webhooks), kie's fresh result links."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from .conftest import Stack, wait_until

pytestmark = pytest.mark.e2e

# The session stack's reconcile sweep runs every 5 minutes (the template's rate): a job done well
# inside that was finished by its own poll loop, not by the sweep.
SWEEP_SECONDS = 300


def start(stack: Stack, stem: str, provider: str, prompt: str) -> str:
    stack.put(f"{stem}.mp4", stack.clip)
    stack.put_sidecar(f"{stem}.json", {"provider": provider, "prompt": prompt})
    return f"{stem}.json"


def entered(job: dict[str, Any], state: str) -> float:
    return datetime.fromisoformat(next(e["at"] for e in job["history"] if e["state"] == state).replace("Z", "+00:00")).timestamp()


def task_polls(stack: Stack, task_id: str) -> int:
    return sum(1 for entry in stack.sim.get("/_sim/requests").json() if entry["provider"] == "runway" and task_id in str(entry.get("path", "")))


def test_a_runway_job_completes_through_its_poll_loop_alone(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    stack.sim_config(hold=True)  # the task stays RUNNING until released: the loop must poll again
    key = start(stack, f"incoming/runway-{unique}", "runway", f"runway {unique}")
    running = stack.wait_for_job(key, states={"SUBMITTED"})
    wait_until(lambda: task_polls(stack, str(running.get("providerTaskId") or "?")) >= 1, 60, "the first poll (about 6 s after the submit)")
    stack.sim_config(hold=False)
    job = stack.wait_for_job(key, timeout=120)
    assert job["status"] == "COMPLETED", job.get("error")
    [task] = stack.sim_tasks(unique)
    assert task["request"]["model"] == "aleph2"
    assert task["request"]["videoUri"].startswith("runway://")  # sent through Runway's upload API
    assert task["callbacks"] == []  # Runway never calls back
    took = entered(job, "SUCCEEDED") - entered(job, "SUBMITTED")
    assert took < SWEEP_SECONDS / 5, f"SUCCEEDED {took:.0f} s after the submit: not the poll loop's doing"
    polls = task_polls(stack, job["providerTaskId"])
    assert 3 <= polls <= 12, polls  # the poll that saw it running, the one that saw it done, finalize's
    prefix = f"runway-{unique}/{job['jobId']}/"
    assert prefix + "result.mp4" in stack.output_keys(prefix)


def test_a_failed_runway_task_fails_the_job_through_its_poll_loop(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    stack.sim_faults([{"fault": "generation_failure", "provider": "runway", "match_prompt": unique}])
    key = start(stack, f"incoming/runway-failed-{unique}", "runway", f"runway failed {unique}")
    job = stack.wait_for_job(key, timeout=120)
    assert job["status"] == "FAILED"
    error = stack.output_json(f"runway-failed-{unique}/{job['jobId']}/error.json")
    assert (error["code"], error["retryable"]) == ("generation_failed", False)
    assert error["details"]["providerCode"].startswith("SAFETY.")


def test_a_replicate_job_completes_through_its_signed_webhook(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    key = start(stack, f"incoming/replicate-{unique}", "replicate", f"replicate {unique}")
    job = stack.wait_for_job(key)
    assert job["status"] == "COMPLETED", job.get("error")
    [task] = stack.sim_tasks(unique)
    assert task["request"]["webhook_events_filter"] == ["completed"]
    assert [c["status"] for c in task["callbacks"]] == [200]


def test_a_replayed_replicate_webhook_changes_nothing(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    stack.sim_faults([{"fault": "duplicate_callback", "provider": "replicate", "match_prompt": unique}])
    key = start(stack, f"incoming/replicate-dup-{unique}", "replicate", f"replicate dup {unique}")
    job = stack.wait_for_job(key)
    assert job["status"] == "COMPLETED", job.get("error")
    [task] = stack.sim_tasks(unique)
    assert [c["status"] for c in task["callbacks"]] == [200, 200]  # the replay is answered, and ignored
    prefix = f"replicate-dup-{unique}/{job['jobId']}/"
    assert [k for k in stack.output_keys(prefix) if "/result" in k] == [prefix + "result.mp4"]
    assert [e["state"] for e in job["history"]].count("SUCCEEDED") == 1


def test_a_badly_signed_replicate_webhook_is_refused_and_changes_nothing(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    stack.sim_faults([{"fault": "bad_signature", "provider": "replicate", "match_prompt": unique}])
    key = start(stack, f"incoming/replicate-forged-{unique}", "replicate", f"replicate forged {unique}")
    job = stack.wait_for_job(key, states={"SUBMITTED"})
    [task] = stack.sim_tasks(unique)

    def refused() -> bool:
        return [c["status"] for c in stack.sim_tasks(unique)[0]["callbacks"]] == [401]

    wait_until(refused, 60, "the badly signed webhook to be answered")
    after = stack.table.get_item(Key={"jobId": job["jobId"]}, ConsistentRead=True)["Item"]
    assert after["status"] == "SUBMITTED"  # the reconciler's poll finishes it later, with our key
    assert task["taskId"] == after["providerTaskId"]


def test_a_kie_job_whose_result_link_expired_completes_through_download_url(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    stack.sim_faults([{"fault": "expired_result", "provider": "kie", "match_prompt": unique}])
    key = start(stack, f"incoming/kie-expired-{unique}", "kie", f"kie expired {unique}")
    job = stack.wait_for_job(key)
    assert job["status"] == "COMPLETED", job.get("error")
    [task] = stack.sim_tasks(unique)
    assert task["expired"] is True  # the link the callback named had expired
    refreshes = [e for e in stack.sim.get("/_sim/requests").json() if e["provider"] == "kie" and "/api/v1/common/download-url" in e["path"]]
    assert refreshes and all(e["http_status"] == 200 for e in refreshes)
    prefix = f"kie-expired-{unique}/{job['jobId']}/"
    assert prefix + "result.mp4" in stack.output_keys(prefix)
