"""The pipeline's metrics: defined here, and only here, and printed as CloudWatch EMF lines.

Each metric is one ``single_metric`` line on stdout (Lambda sends it to CloudWatch Logs, which
turns it into a metric): no API call, no handler decorator. The namespace comes from
``POWERTOOLS_METRICS_NAMESPACE`` and Powertools adds the ``service`` dimension
(``POWERTOOLS_SERVICE_NAME``) to every line. ``CATALOGUE`` is what the dashboard may name.

A failed metric line is logged and dropped: telemetry never fails a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from .log import logger

UNKNOWN = "unknown"


@dataclass(frozen=True)
class MetricSpec:
    unit: MetricUnit
    dimensions: tuple[str, ...]


# Dimension sets kept few ([Provider], [Provider, Model], [Provider, FailureCode]): each set is a metric billed.
# The provider is not known yet when a job is received (intake reads the sidecar after), so
# JobsReceived has only the service dimension.
CATALOGUE: dict[str, MetricSpec] = {
    "JobsReceived": MetricSpec(MetricUnit.Count, ()),
    # By model too, where it stays cheap: one metric per (provider, model) actually used.
    "JobsSubmitted": MetricSpec(MetricUnit.Count, ("Provider", "Model")),
    "JobsCompleted": MetricSpec(MetricUnit.Count, ("Provider",)),
    "JobsFailed": MetricSpec(MetricUnit.Count, ("Provider", "FailureCode")),
    "UploadToSubmitSeconds": MetricSpec(MetricUnit.Seconds, ("Provider",)),
    "UploadToCompleteSeconds": MetricSpec(MetricUnit.Seconds, ("Provider",)),
    "ProviderSeconds": MetricSpec(MetricUnit.Seconds, ("Provider",)),
    "CopyBytesPerSecond": MetricSpec(MetricUnit.BytesPerSecond, ("Provider",)),
    "ProviderCostUSD": MetricSpec(MetricUnit.NoUnit, ("Provider",)),
    # The reconciler's backlog, once per run: jobs it examined, failed at their deadline, and
    # whether it ran out of time with work left (non-zero: the backlog outgrows a run).
    "ReconcileExamined": MetricSpec(MetricUnit.Count, ()),
    "ReconcileTimedOut": MetricSpec(MetricUnit.Count, ()),
    "ReconcileOutOfTime": MetricSpec(MetricUnit.Count, ()),
    "InputCleanupFailed": MetricSpec(MetricUnit.Count, ("Mode",)),
    # How much of a budget (Budget: daily or monthly) is spent or reserved, after each reservation.
    "BudgetUsedPercent": MetricSpec(MetricUnit.Percent, ("Budget",)),
}


def emit(name: str, value: float, job_id: str | None = None, **dimensions: str) -> None:
    """Print one EMF line for ``name``; ``dimensions`` must be exactly the catalogue's.

    ``job_id`` goes in the line as ``jobId`` metadata (searchable in the logs, not a dimension)."""
    spec = CATALOGUE[name]
    if set(dimensions) != set(spec.dimensions):
        raise ValueError(f"metric {name} takes the dimensions {list(spec.dimensions)}, not {sorted(dimensions)}")
    try:
        with single_metric(name=name, unit=spec.unit, value=value) as metric:
            for dimension in spec.dimensions:
                metric.add_dimension(name=dimension, value=dimensions[dimension] or UNKNOWN)
            if job_id:
                metric.add_metadata(key="jobId", value=job_id)
    except Exception as exc:  # a bad value must not fail the job whose state already moved
        logger.warning("metric not emitted", extra={"metric": name, "reason": str(exc)})


def job_received(job_id: str) -> None:
    emit("JobsReceived", 1, job_id)


def job_moved(item: dict[str, Any]) -> None:
    """The metrics of the state change a job item (as written) has just made.

    Called once per conditional write that succeeded, so a repeated event that changed nothing
    counts nothing. Durations are read from the job's own history (the time of each state), with
    the job's creation (its sidecar's arrival) as the upload time.
    """
    state = str(item.get("status"))
    provider = str(item.get("provider") or UNKNOWN)
    job_id = str(item.get("jobId") or "") or None
    times = _state_times(item)
    if state == "SUBMITTED":
        emit("JobsSubmitted", 1, job_id, Provider=provider, Model=str(item.get("model") or UNKNOWN))
        _emit_between("UploadToSubmitSeconds", times, "RECEIVED", "SUBMITTED", provider=provider, job_id=job_id)
    elif state == "SUCCEEDED":
        _emit_between("ProviderSeconds", times, "SUBMITTED", "SUCCEEDED", provider=provider, job_id=job_id)
    elif state == "COMPLETED":
        emit("JobsCompleted", 1, job_id, Provider=provider)
        _emit_between("UploadToCompleteSeconds", times, "RECEIVED", "COMPLETED", provider=provider, job_id=job_id)
    elif state == "FAILED":
        error = item.get("error")
        code = str(error.get("code")) if isinstance(error, dict) and error.get("code") else UNKNOWN
        emit("JobsFailed", 1, job_id, Provider=provider, FailureCode=code)


def copy_throughput(job_id: str, provider: str, outputs: list[dict[str, object]], seconds: float) -> None:
    """Bytes per second of a job's result copy (``outputs``: the copied files with their ``size``)."""
    copied_bytes = sum(size for output in outputs if isinstance(size := output.get("size"), int))
    if copied_bytes > 0 and seconds > 0:
        emit("CopyBytesPerSecond", copied_bytes / seconds, job_id, Provider=provider)


def provider_cost(job_id: str, provider: str, cost_usd: Any) -> None:
    """The cost the provider reported for the job (nothing when it reports none)."""
    if isinstance(cost_usd, int | float | Decimal) and not isinstance(cost_usd, bool):
        emit("ProviderCostUSD", float(cost_usd), job_id, Provider=provider)


def reconcile_backlog(report: dict[str, int]) -> None:
    """A reconcile run's backlog, from its report (``ReconcileReport.as_dict``)."""
    emit("ReconcileExamined", report.get("examined", 0))
    emit("ReconcileTimedOut", report.get("timed_out", 0))
    emit("ReconcileOutOfTime", report.get("out_of_time", 0))


def input_cleanup_failed(job_id: str, mode: str) -> None:
    emit("InputCleanupFailed", 1, job_id, Mode=mode)


def _state_times(item: dict[str, Any]) -> dict[str, datetime]:
    times: dict[str, datetime] = {}
    for entry in item.get("history", ()):
        if isinstance(entry, dict) and isinstance(entry.get("at"), str):
            try:
                times.setdefault(str(entry.get("state")), datetime.fromisoformat(entry["at"].replace("Z", "+00:00")))
            except ValueError:
                continue
    return times


def _emit_between(name: str, times: dict[str, datetime], start: str, end: str, *, provider: str, job_id: str | None) -> None:
    if start in times and end in times:
        emit(name, max((times[end] - times[start]).total_seconds(), 0.0), job_id, Provider=provider)
