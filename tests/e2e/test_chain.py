"""A sidecar's provider chain through the whole local stack: kie in maintenance, apikley runs the
edit, one task in all, and job.json and the status API say who was tried and why it moved on."""

from __future__ import annotations

import pytest

from .conftest import Stack
from .test_pipeline import run_pair
from .test_status_api import signing

pytestmark = pytest.mark.e2e


def test_kie_in_maintenance_hands_the_job_to_apikley_which_completes_it(stack_clean: Stack, unique: str) -> None:
    stack = stack_clean
    marker = f"chain {unique}"
    stack.sim_faults([{"fault": "maintenance", "provider": "kie", "match_prompt": marker}])
    key = run_pair(stack, f"incoming/chain/shot-{unique}", marker, extra={"providers": ["kie", "apikley"]})

    job = stack.wait_for_job(key)
    assert job["status"] == "COMPLETED", job.get("error")
    assert [task["provider"] for task in stack.sim_tasks(marker)] == ["apikley"]

    document = stack.output_json(f"chain/shot-{unique}/{job['jobId']}/job.json")
    assert (document["provider"], document["model"]) == ("apikley", "aleph")
    [tried] = document["providersTried"]
    assert (tried["provider"], tried["model"], tried["providerCode"]) == ("kie", "aleph", "455")
    assert "maintenance" in tried["reason"]

    status = stack.api.get(f"/jobs/{job['jobId']}", auth=signing(stack.info)).json()
    assert [entry["provider"] for entry in status["providersTried"]] == ["kie"]
