"""The EMF lines the real handlers print for a completed and a failed job, read from the stack's log."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aleph_pipeline.telemetry import CATALOGUE

from .conftest import Stack, wait_until

pytestmark = pytest.mark.e2e

NAMESPACE = "AlephPipeline"  # the template's POWERTOOLS_METRICS_NAMESPACE, as the local stack sets it


def metric_lines(stack: Stack, job_id: str) -> dict[str, dict[str, Any]]:
    """The job's EMF lines in stack.log, by metric name (each handler's stdout, tagged with its function)."""
    found: dict[str, dict[str, Any]] = {}
    for text in (stack.workdir / "stack.log").read_text(errors="replace").splitlines():
        if '"_aws"' not in text or job_id not in text:
            continue
        line = json.loads(text)
        if line.get("jobId") != job_id:
            continue
        (directive,) = line["_aws"]["CloudWatchMetrics"]
        (metric,) = directive["Metrics"]
        assert metric["Name"] not in found, f"{metric['Name']} printed twice for one job"
        found[metric["Name"]] = line
    return found


def wait_for_metrics(stack: Stack, job_id: str, names: set[str]) -> dict[str, dict[str, Any]]:
    # A handler prints the line just after its state write: the job's state may be seen first.
    wait_until(lambda: names <= set(metric_lines(stack, job_id)), 15, f"metrics {sorted(names)} of job {job_id} in stack.log")
    return metric_lines(stack, job_id)


def assert_shape(name: str, line: dict[str, Any]) -> None:
    (directive,) = line["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == NAMESPACE
    assert directive["Metrics"] == [{"Name": name, "Unit": CATALOGUE[name].unit.value}]
    assert directive["Dimensions"] == [[*CATALOGUE[name].dimensions, "service"]]
    assert line["service"] == "aleph-pipeline"
    assert isinstance(line[name], list)
    assert all(isinstance(value, float) and value >= 0 for value in line[name])


def put_pair(stack: Stack, stem: str, prompt: str) -> str:
    stack.put(f"{stem}.mp4", stack.clip)
    stack.put_sidecar(f"{stem}.json", {"prompt": prompt})
    return f"{stem}.json"


def test_a_completed_job_prints_each_metric_of_its_way_once(stack_clean: Stack, unique: str) -> None:
    job = stack_clean.wait_for_job(put_pair(stack_clean, f"incoming/metrics-{unique}", f"metrics {unique}"))
    assert job["status"] == "COMPLETED", job.get("error")
    expected = {"JobsReceived", "JobsSubmitted", "UploadToSubmitSeconds", "ProviderSeconds", "CopyBytesPerSecond", "JobsCompleted", "UploadToCompleteSeconds"}
    lines = wait_for_metrics(stack_clean, job["jobId"], expected)
    assert set(lines) - expected <= {"ProviderCostUSD"}  # cost only when the provider reports one
    assert "JobsFailed" not in lines
    for name, line in lines.items():
        assert_shape(name, line)
        if CATALOGUE[name].dimensions:
            assert line["Provider"] == "kie"
    assert lines["JobsCompleted"]["function"] == "finalize"
    assert lines["JobsSubmitted"]["function"] == "submit"
    assert lines["UploadToCompleteSeconds"]["UploadToCompleteSeconds"][0] >= lines["UploadToSubmitSeconds"]["UploadToSubmitSeconds"][0]


def test_a_failed_job_prints_its_provider_and_failure_code(stack_clean: Stack, unique: str) -> None:
    stack_clean.sim_faults([{"fault": "generation_failure", "match_prompt": unique, "msg": "caught by the moderator"}])
    job = stack_clean.wait_for_job(put_pair(stack_clean, f"incoming/metrics-fail-{unique}", f"fail {unique}"))
    assert job["status"] == "FAILED"
    lines = wait_for_metrics(stack_clean, job["jobId"], {"JobsReceived", "JobsSubmitted", "JobsFailed"})
    assert not {"JobsCompleted", "UploadToCompleteSeconds", "CopyBytesPerSecond"} & set(lines)
    for name, line in lines.items():
        assert_shape(name, line)
    failed = lines["JobsFailed"]
    assert (failed["Provider"], failed["FailureCode"]) == ("kie", "generation_failed")
    assert failed["JobsFailed"] == [1.0]
