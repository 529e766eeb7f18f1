"""The EMF lines the pipeline prints: one per metric, with the catalogue's unit and dimensions."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from aleph_pipeline import telemetry
from aleph_pipeline.errors import JobError
from aleph_pipeline.jobs import JobStore

NAMESPACE = "AlephPipelineTest"


@pytest.fixture(autouse=True)
def namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "aleph-pipeline")


def emf_lines(text: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if "_aws" in line]


def metric_of(line: dict[str, Any]) -> tuple[str, str, list[str], float]:
    """(name, unit, dimension names, value) of a one-metric EMF line."""
    (directive,) = line["_aws"]["CloudWatchMetrics"]
    (metric,) = directive["Metrics"]
    (dimensions,) = directive["Dimensions"]
    assert directive["Namespace"] == NAMESPACE
    for dimension in dimensions:
        assert isinstance(line[dimension], str), dimension
    (value,) = line[metric["Name"]]
    return metric["Name"], metric["Unit"], sorted(dimensions), value


@pytest.mark.parametrize("name", sorted(telemetry.CATALOGUE))
def test_each_metric_prints_one_emf_line_with_its_unit_and_dimensions(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    spec = telemetry.CATALOGUE[name]
    telemetry.emit(name, 2.5, **{dimension: f"{dimension.lower()}-value" for dimension in spec.dimensions})
    (line,) = emf_lines(capsys.readouterr().out)
    assert metric_of(line) == (name, spec.unit.value, sorted([*spec.dimensions, "service"]), 2.5)
    for dimension in spec.dimensions:
        assert line[dimension] == f"{dimension.lower()}-value"


def test_a_metric_given_other_dimensions_than_its_own_is_refused() -> None:
    with pytest.raises(ValueError, match=r"JobsFailed takes the dimensions \['Provider', 'FailureCode'\]"):
        telemetry.emit("JobsFailed", 1, Provider="kie")


def history(*states: tuple[str, str]) -> list[dict[str, str]]:
    return [{"state": state, "at": at} for state, at in states]


def test_a_completed_job_counts_once_with_its_time_from_upload(capsys: pytest.CaptureFixture[str]) -> None:
    item = {
        "jobId": "job-7",
        "status": "COMPLETED",
        "provider": "runware",
        "history": history(
            ("RECEIVED", "2026-01-01T00:00:00.000Z"),
            ("SUBMITTED", "2026-01-01T00:00:02.500Z"),
            ("SUCCEEDED", "2026-01-01T00:01:00.000Z"),
            ("COMPLETED", "2026-01-01T00:01:10.000Z"),
        ),
    }
    telemetry.job_moved(item)
    lines = emf_lines(capsys.readouterr().out)
    metrics = [metric_of(line) for line in lines]
    assert metrics == [
        ("JobsCompleted", "Count", ["Provider", "service"], 1.0),
        ("UploadToCompleteSeconds", "Seconds", ["Provider", "service"], 70.0),
    ]
    assert {line["jobId"] for line in lines} == {"job-7"}  # metadata, not a dimension


def test_submitted_and_succeeded_moves_time_the_submit_and_the_provider(capsys: pytest.CaptureFixture[str]) -> None:
    states = (("RECEIVED", "2026-01-01T00:00:00.000Z"), ("SUBMITTED", "2026-01-01T00:00:02.500Z"), ("SUCCEEDED", "2026-01-01T00:01:00.000Z"))
    telemetry.job_moved({"status": "SUBMITTED", "provider": "kie", "history": history(*states[:2])})
    telemetry.job_moved({"status": "SUCCEEDED", "provider": "kie", "history": history(*states)})
    metrics = [metric_of(line)[::3] for line in emf_lines(capsys.readouterr().out)]
    assert metrics == [("JobsSubmitted", 1.0), ("UploadToSubmitSeconds", 2.5), ("ProviderSeconds", 57.5)]


def test_a_submitted_job_counts_by_provider_and_model(capsys: pytest.CaptureFixture[str]) -> None:
    telemetry.job_moved({"status": "SUBMITTED", "provider": "runware", "model": "runway:aleph@1", "jobId": "job-3", "history": []})
    telemetry.job_moved({"status": "SUBMITTED", "provider": "kie", "jobId": "job-4", "history": []})  # no model recorded
    lines = emf_lines(capsys.readouterr().out)
    assert [metric_of(line) for line in lines] == [("JobsSubmitted", "Count", ["Model", "Provider", "service"], 1.0)] * 2
    assert [(line["Provider"], line["Model"]) for line in lines] == [("runware", "runway:aleph@1"), ("kie", "unknown")]


def test_a_reconcile_run_prints_its_backlog(capsys: pytest.CaptureFixture[str]) -> None:
    from aleph_pipeline.reconcile import ReconcileReport

    telemetry.reconcile_backlog(ReconcileReport(examined=7, timed_out=2, out_of_time=1, polled=5).as_dict())
    metrics = [metric_of(line) for line in emf_lines(capsys.readouterr().out)]
    assert metrics == [
        ("ReconcileExamined", "Count", ["service"], 7.0),
        ("ReconcileTimedOut", "Count", ["service"], 2.0),
        ("ReconcileOutOfTime", "Count", ["service"], 1.0),
    ]


def test_a_failed_input_clean_up_is_counted_by_mode(capsys: pytest.CaptureFixture[str]) -> None:
    telemetry.input_cleanup_failed("job-5", "delete")
    (line,) = emf_lines(capsys.readouterr().out)
    assert metric_of(line) == ("InputCleanupFailed", "Count", ["Mode", "service"], 1.0)
    assert (line["Mode"], line["jobId"]) == ("delete", "job-5")


def test_a_failure_before_a_provider_was_chosen_is_counted_under_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    telemetry.job_moved({"status": "FAILED", "error": {"code": "invalid_sidecar"}, "history": history(("RECEIVED", "2026-01-01T00:00:00Z"))})
    (line,) = emf_lines(capsys.readouterr().out)
    assert metric_of(line) == ("JobsFailed", "Count", ["FailureCode", "Provider", "service"], 1.0)
    assert (line["Provider"], line["FailureCode"]) == ("unknown", "invalid_sidecar")


def test_cost_is_emitted_only_when_the_provider_reported_one(capsys: pytest.CaptureFixture[str]) -> None:
    telemetry.provider_cost("job-1", "kie", None)
    telemetry.provider_cost("job-1", "kie", Decimal("0.125"))
    (line,) = emf_lines(capsys.readouterr().out)
    assert metric_of(line) == ("ProviderCostUSD", "None", ["Provider", "service"], 0.125)


def test_copy_throughput_is_bytes_copied_over_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    telemetry.copy_throughput("job-1", "kie", [{"key": "a", "size": 3_000}, {"key": "b", "size": 1_000}], 2.0)
    telemetry.copy_throughput("job-1", "kie", [], 2.0)  # nothing copied: no line
    (line,) = emf_lines(capsys.readouterr().out)
    assert metric_of(line) == ("CopyBytesPerSecond", "Bytes/Second", ["Provider", "service"], 2_000.0)


class OnceTable:
    """A table whose first conditional update is written and every later one finds the state moved on."""

    def __init__(self, written: dict[str, Any]) -> None:
        self.written = written
        self.calls = 0

    def update_item(self, **update: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls > 1:
            error = Exception("conditional check failed")
            error.response = {"Error": {"Code": "ConditionalCheckFailedException"}}  # type: ignore[attr-defined]
            raise error
        return {"Attributes": self.written}


def test_a_repeated_transition_that_writes_nothing_counts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    table = OnceTable({"status": "FAILED", "provider": "kie", "error": {"code": "generation_failed"}, "history": []})
    store = JobStore(table)
    error = JobError("generation_failed", "the provider reports the task failed", "provider")
    assert store.mark_failed("job-1", error) is True
    assert store.mark_failed("job-1", error) is False
    lines = emf_lines(capsys.readouterr().out)
    assert [metric_of(line)[0] for line in lines] == ["JobsFailed"]
    assert lines[0]["FailureCode"] == "generation_failed"
