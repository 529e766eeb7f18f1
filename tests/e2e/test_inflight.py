"""End to end through a local stack: Runway's tasks in flight held to ``ProviderConcurrency``,
counted by the provider (the simulator's ``maxRunning`` and ``throttled``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from local.apigw import SigV4HttpxAuth

from .conftest import Stack, open_stack, wait_until

pytestmark = pytest.mark.e2e

LIMIT = 2  # the client's limit, and the simulator's Runway concurrency (its default)
JOBS = 6


@pytest.fixture(scope="module")
def flight_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with open_stack(tmp_path_factory.mktemp("inflight"), "--env", f"PROVIDER_CONCURRENCY={json.dumps({'runway': LIMIT})}") as opened:
        yield opened


def runway_counts(stack: Stack) -> dict[str, Any]:
    counts: dict[str, Any] = stack.sim.get("/runway/_sim/config").json()
    return counts


def test_runway_jobs_over_the_limit_wait_for_a_slot_and_all_complete(flight_stack: Stack, unique: str) -> None:
    stack = flight_stack
    stack.sim.post("/runway/_sim/config", json={"concurrency": LIMIT, "resetCounts": True}).raise_for_status()
    stack.sim_config(hold=True)  # the first tasks stay RUNNING: the others must wait for their slots
    keys = [f"incoming/flight-{unique}/clip-{index}.json" for index in range(JOBS)]
    for key in keys:
        stack.put(key.replace(".json", ".mp4"), stack.clip)
    for index, key in enumerate(keys):
        stack.put_sidecar(key, {"provider": "runway", "prompt": f"flight {unique} {index}"})

    def jobs() -> list[dict[str, Any]]:
        return [job for job in (stack.job_for(key) for key in keys) if job is not None]

    wait_until(lambda: sum(job["status"] == "SUBMITTED" for job in jobs()) == LIMIT, 90, f"{LIMIT} jobs submitted")
    wait_until(lambda: sum("flightWait" in job for job in jobs()) == JOBS - LIMIT, 90, "the other jobs waiting for a slot")
    waiting = next(job for job in jobs() if "flightWait" in job)
    signing = SigV4HttpxAuth(stack.info["aws_access_key_id"], stack.info["aws_secret_access_key"], region=stack.info["region"])
    answer = stack.api.get(f"/jobs/{waiting['jobId']}", auth=signing)
    assert answer.status_code == 200, answer.text
    assert answer.json()["waitingFor"] == f"waiting for a provider slot ({LIMIT} of {LIMIT} tasks in flight)"
    assert sum(job["status"] == "SUBMITTED" for job in jobs()) == LIMIT  # nothing more was sent meanwhile

    stack.sim_config(hold=False)
    finished = {key: stack.wait_for_job(key, timeout=240) for key in keys}
    assert [job["status"] for job in finished.values()] == ["COMPLETED"] * JOBS, [job.get("error") for job in finished.values()]
    counts = runway_counts(stack)
    assert counts["maxRunning"] <= LIMIT, counts
    assert counts["throttled"] == 0, counts  # the provider never had to queue one of ours
    tasks = stack.sim_tasks(f"flight {unique}")
    assert len(tasks) == JOBS  # one task per job: none sent twice
