"""200 jobs through the local stack: throughput, latency, compute per job, and the AWS cost per 1,000 jobs.

The stack is the one ``make local`` runs (``local.stack.spawn``: moto server, the provider
simulator, the real handlers fed by the dispatcher), with the simulator told to answer at once
(``delay_seconds`` 0). The simulator still really edits every video with ffmpeg, so the input is
a 1-second 160x90 clip: the edit then costs a few tens of milliseconds and the pipeline, not the
simulator, is what is measured.

Each job is a video upload then its sidecar, from four client threads. Latency runs from just
before the sidecar's PUT (client clock) to the COMPLETED entry of the job's history (the
handler's clock, the same machine). Jobs per second: 200 over the time from the first upload to
the last COMPLETED.

Compute is measured in the stack process by ``bench/instrument/sitecustomize.py``: the wall time
of every handler invocation (what Lambda bills; here an upper bound, since the handlers share two
cores with moto, the simulator and ffmpeg). Requests are the AWS API calls the handlers make, from
the stack's call log (``--record-aws-calls``, written by the functions' own processes; the
dispatcher's SQS polling and stream reading stand in for AWS's event sources and are not in it;
presigned URLs are not requests). The CPU time of the stack and of each function's process is
printed as a cross-check. From those and the prices
below comes the AWS cost per 1,000 jobs.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import median, save, table, verdict
from local.client import REPO_ROOT, aws_client, wait_for
from local.media import make_clip
from local.stack import spawn, terminate
from local.template_config import load_template_config

JOBS = 200
SOLO_JOBS = 10
UPLOAD_THREADS = 4
TIMEOUT_SECONDS = 300
TARGET_PER_1000 = 0.10

# AWS list prices, us-east-1, USD, as published on the services' pricing pages in 2025 (DynamoDB
# on-demand after its November 2024 reduction). Check them before relying on the result.
PRICES = {
    "lambda_gb_second_arm64": 0.0000133334,  # aws.amazon.com/lambda/pricing (first 7.5 billion GB-s/month)
    "lambda_request": 0.20 / 1e6,  # aws.amazon.com/lambda/pricing
    "http_api_request": 1.00 / 1e6,  # aws.amazon.com/api-gateway/pricing (HTTP API, first 300 million)
    "sqs_request": 0.40 / 1e6,  # aws.amazon.com/sqs/pricing (standard queue, per 64 KB chunk)
    "dynamodb_write_unit": 0.625 / 1e6,  # aws.amazon.com/dynamodb/pricing/on-demand (WRU: 1 KB)
    "dynamodb_read_unit": 0.125 / 1e6,  # same page (RRU: a strongly consistent read of 4 KB)
    "s3_put_class": 0.005 / 1000,  # aws.amazon.com/s3/pricing (S3 Standard PUT, COPY, POST, LIST)
    "s3_get_class": 0.0004 / 1000,  # same page (GET, HEAD and all other requests)
    "secrets_manager_call": 0.05 / 10000,  # aws.amazon.com/secrets-manager/pricing
    "xray_trace": 5.00 / 1e6,  # aws.amazon.com/xray/pricing (traces recorded; template: Tracing Active)
    "cloudwatch_logs_gb": 0.50,  # aws.amazon.com/cloudwatch/pricing (standard log ingestion)
}
# The provider's own price for the same job (a 5-second edit).
PROVIDER_PRICES = {
    "runware (Aleph 2.0, $0.28 per second)": 0.28 * 5,
    "kie / apikley": None,  # not published in the documents this project is written from
}
S3_PUT_CLASS = {"PutObject", "CopyObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "ListObjectsV2", "ListObjects"}
# What happens outside the handlers, per job: the user's two uploads, S3's two notifications to
# SQS, and the provider fetching the video once through its presigned URL.
USER_S3_PUTS_PER_JOB = 2
S3_NOTIFICATIONS_PER_JOB = 2
PROVIDER_S3_GETS_PER_JOB = 1
LAMBDA_REPORT_LOG_BYTES = 400  # START/END/REPORT lines Lambda writes per invocation


def _proc_cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime (and, with ``children``, that of its waited-for children: the simulator's ffmpeg)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> dict[str, list[int]]:
    """The stack's subprocesses by name (moto server, simulator, each function's sandboxes)."""
    found: dict[str, list[int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "local.lambda_worker" in command:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                function = next((v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"AWS_LAMBDA_FUNCTION_NAME=")), command[:40])
                found.setdefault(f"function {function}", []).append(int(child))
            else:
                name = "moto server" if "moto.server" in command else "simulator (with ffmpeg)" if "local.simulator" in command else command[:40]
                found.setdefault(name, []).append(int(child))
    return found


def _cpu_all(pid: int) -> dict[str, float]:
    cpu = {"stack (dispatcher, API)": _proc_cpu_seconds(pid)}
    for name, children in _children(pid).items():
        cpu[name] = sum(_proc_cpu_seconds(child, children=True) for child in children)
    return cpu


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run(workdir: Path) -> dict[str, Any]:
    calls_file = workdir / "aws-calls.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "bench" / "instrument"), env.get("PYTHONPATH", "")]))
    env["BENCH_AWS_CALLS_FILE"] = str(calls_file)
    clip = make_clip(workdir / "clip.mp4", seconds=1, size="160x90", rate=24).read_bytes()
    # The stack's own throughput, not kie's pace (20 new tasks per 10 s; bench/scale.py measures that).
    process, info = spawn(workdir / "stack", "--quiet", "--record-aws-calls", "--env", 'PROVIDER_RATE_LIMITS={"kie": "none"}', env=env)
    calls_log = Path(info["aws_calls_log"])
    try:
        httpx.post(f"{info['simulator_url']}/_sim/config", json={"delay_seconds": 0}, timeout=10).raise_for_status()
        s3, table_client = aws_client("s3", info), aws_client("dynamodb", info)
        bucket, prefix = info["input_bucket"], info["input_prefix"]
        sidecar_put_at: dict[str, float] = {}
        lock = threading.Lock()

        def upload(index: int) -> None:
            stem = f"{prefix}bench/job-{index:04d}"
            s3.put_object(Bucket=bucket, Key=f"{stem}.mp4", Body=clip)
            at = time.time()
            s3.put_object(Bucket=bucket, Key=f"{stem}.json", Body=json.dumps({"prompt": "make it snow", "provider": "kie"}).encode())
            with lock:
                sidecar_put_at[f"{stem}.json"] = at

        def finished() -> int:
            answer = table_client.scan(
                TableName=info["jobs_table"],
                Select="COUNT",
                FilterExpression="#s IN (:done, :failed) AND attribute_exists(sidecarKey)",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":done": {"S": "COMPLETED"}, ":failed": {"S": "FAILED"}},
                ConsistentRead=True,
            )
            return int(answer["Count"])

        # One job at a time first: the path's own latency, with no queue in front of it.
        alone: list[float] = []
        for index in range(SOLO_JOBS + 1):
            upload(JOBS + index)

            def alone_done(count: int = index) -> bool:
                return finished() > count

            wait_for(alone_done, timeout=60, interval=0.05, message="a job on its own to finish")
        solo = [job for job in _scan(table_client, info["jobs_table"]) if job.get("status") == "COMPLETED"]
        for job in solo:
            if not job["sidecarKey"].endswith(f"{JOBS:04d}.json"):  # the first warms the handlers up
                alone.append(_completed_at(job) - sidecar_put_at[job["sidecarKey"]])

        # Then all of them at once: throughput, and latency with the queue.
        cpu_before = _cpu_all(process.pid)
        calls_before = _read_counts(calls_file, calls_log, process.pid)
        started = time.time()
        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            list(pool.map(upload, range(JOBS)))
        total = JOBS + SOLO_JOBS + 1
        wait_for(lambda: finished() >= total, timeout=TIMEOUT_SECONDS, interval=1.0, message=f"{JOBS} jobs to finish")
        cpu_after = _cpu_all(process.pid)
        counts = _read_counts(calls_file, calls_log, process.pid)
        items = [item for item in _scan(table_client, info["jobs_table"]) if item.get("sidecarKey", "").split("job-")[-1] < f"{JOBS:04d}"]
    finally:
        terminate(process)
    log_bytes = sum(len(line) + 1 for line in (workdir / "stack" / "stack.log").read_text(errors="replace").splitlines() if line.startswith("{"))
    cpu = {name: seconds - cpu_before.get(name, 0.0) for name, seconds in cpu_after.items()}
    summary = _summarize(info, items, sidecar_put_at, started, cpu=cpu, counts=_subtract(counts, calls_before), log_bytes=log_bytes * JOBS / total)
    alone.sort()
    summary["solo_jobs"] = len(alone)
    summary["solo_latency_p50_seconds"] = _percentile(alone, 50)
    summary["solo_latency_max_seconds"] = max(alone)
    return summary


def _completed_at(job: dict[str, Any]) -> float:
    return _parse_time(next(entry["at"] for entry in reversed(job["history"]) if entry["state"] == "COMPLETED"))


def _read_counts(path: Path, calls_log: Path, pid: int) -> dict[str, Any]:
    """The invocation times so far (the stack writes them when it gets SIGUSR1) and the handlers'
    AWS API calls so far by ``service.Operation``, from the stack's call log."""
    import signal

    stamp = path.stat().st_mtime_ns if path.is_file() else 0
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: path.is_file() and path.stat().st_mtime_ns != stamp, timeout=10, interval=0.02, message="the stack's invocation times")
    counts: dict[str, Any] = json.loads(path.read_text())
    calls: dict[str, int] = {}
    for line in calls_log.read_text(encoding="utf-8").splitlines() if calls_log.is_file() else []:
        try:
            call = json.loads(line)
        except ValueError:  # the last line, still being written
            continue
        if not call.get("presigned"):
            name = f"{call['service']}.{call['operation']}"
            calls[name] = calls.get(name, 0) + 1
    counts["calls"] = calls
    return counts


def _subtract(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    calls = {name: count - before["calls"].get(name, 0) for name, count in after["calls"].items()}
    invocations = {name: times[len(before["invocations"].get(name, [])) :] for name, times in after["invocations"].items()}
    return {"calls": {k: v for k, v in calls.items() if v}, "invocations": {k: v for k, v in invocations.items() if v}}


def _scan(client: Any, table_name: str) -> list[dict[str, Any]]:
    from boto3.dynamodb.types import TypeDeserializer

    deserializer = TypeDeserializer()
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table_name, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        items.extend({key: deserializer.deserialize(value) for key, value in item.items()} for item in page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _item_bytes(item: dict[str, Any]) -> int:
    """DynamoDB's item size, roughly: attribute names plus values (as JSON text)."""
    return sum(len(key) + len(json.dumps(value, default=str)) for key, value in item.items())


def _summarize(
    info: dict[str, Any],
    items: list[dict[str, Any]],
    sidecar_put_at: dict[str, float],
    started: float,
    *,
    cpu: dict[str, float],
    counts: dict[str, Any],
    log_bytes: float,
) -> dict[str, Any]:
    jobs = [item for item in items if "sidecarKey" in item]
    completed = [job for job in jobs if job["status"] == "COMPLETED"]
    latencies, finished_at = [], []
    for job in completed:
        finished_at.append(_completed_at(job))
        latencies.append(_completed_at(job) - sidecar_put_at[job["sidecarKey"]])
    latencies.sort()
    elapsed = max(finished_at) - started
    n = len(jobs)

    config = load_template_config(REPO_ROOT / "template.yaml")
    memory_mb = {name: spec.memory_mb for name, spec in config.functions.items()}
    functions: dict[str, Any] = {}
    for name, durations in counts["invocations"].items():
        billed_ms = sum(math.ceil(d * 1000) for d in durations)
        functions[name] = {
            "invocations_per_job": len(durations) / n,
            "seconds_per_job": billed_ms / 1000 / n,
            "median_invocation_ms": median(durations) * 1000,
            "memory_mb": memory_mb.get(name, 512),
            "gb_seconds_per_job": billed_ms / 1000 * memory_mb.get(name, 512) / 1024 / n,
        }
    calls: dict[str, int] = counts["calls"]
    per_job = {name: count / n for name, count in sorted(calls.items())}
    s3_put = sum(c for name, c in calls.items() if name.startswith("s3.") and name.split(".", 1)[1] in S3_PUT_CLASS) / n + USER_S3_PUTS_PER_JOB
    s3_get = sum(c for name, c in calls.items() if name.startswith("s3.") and name.split(".", 1)[1] not in S3_PUT_CLASS) / n + PROVIDER_S3_GETS_PER_JOB
    dynamo_writes = sum(c for name, c in calls.items() if name.split(".", 1)[1] in ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem")) / n
    dynamo_reads = sum(c for name, c in calls.items() if name.split(".", 1)[1] in ("GetItem", "Query", "Scan", "BatchGetItem")) / n
    write_units = math.ceil(median([_item_bytes(item) for item in items]) / 1024)
    secrets = sum(c for name, c in calls.items() if name.startswith("secretsmanager.")) / n
    submit_batches = functions.get("submit", {}).get("invocations_per_job", 0.0)
    invocations = sum(f["invocations_per_job"] for f in functions.values())
    callbacks = functions.get("callback", {}).get("invocations_per_job", 0.0)
    lines = {
        "Lambda compute (arm64 GB-s)": sum(f["gb_seconds_per_job"] for f in functions.values()) * PRICES["lambda_gb_second_arm64"],
        "Lambda requests": invocations * PRICES["lambda_request"],
        "API Gateway HTTP API (callbacks)": callbacks * PRICES["http_api_request"],
        # S3 -> SQS notifications, and per submit batch one receive and one delete.
        "SQS": (S3_NOTIFICATIONS_PER_JOB + 2 * submit_batches) * PRICES["sqs_request"],
        "DynamoDB writes (on-demand)": dynamo_writes * write_units * PRICES["dynamodb_write_unit"],
        "DynamoDB reads (strongly consistent)": dynamo_reads * PRICES["dynamodb_read_unit"],
        "S3 PUT/LIST class": s3_put * PRICES["s3_put_class"],
        "S3 GET/HEAD class": s3_get * PRICES["s3_get_class"],
        "Secrets Manager calls": secrets * PRICES["secrets_manager_call"],
        "X-Ray traces (every invocation traced)": invocations * PRICES["xray_trace"],
        "CloudWatch Logs ingestion": (log_bytes / n + invocations * LAMBDA_REPORT_LOG_BYTES) / 1e9 * PRICES["cloudwatch_logs_gb"],
    }
    per_1000 = {name: cost * 1000 for name, cost in lines.items()}
    total = sum(per_1000.values())
    return {
        "jobs": n,
        "completed": len(completed),
        "failed": n - len(completed),
        "clip": "1 s, 160x90, H.264 (the simulator's edit is real ffmpeg)",
        "elapsed_seconds": elapsed,
        "jobs_per_second": len(completed) / elapsed,
        "latency_p50_seconds": _percentile(latencies, 50),
        "latency_p95_seconds": _percentile(latencies, 95),
        "functions": functions,
        "handler_seconds_per_job": sum(f["seconds_per_job"] for f in functions.values()),
        "cpu_seconds_per_job": {name: seconds / n for name, seconds in cpu.items()},
        "aws_calls_per_job": per_job,
        "dynamodb_write_units_per_write": write_units,
        "handler_log_bytes_per_job": log_bytes / n,
        "cost_per_1000_jobs": per_1000,
        "cost_per_1000_jobs_total": total,
        "provider_price_per_1000_jobs": {name: (price * 1000 if price is not None else None) for name, price in PROVIDER_PRICES.items()},
        "target_met": total < TARGET_PER_1000,
        "prices": PRICES,
        "region": info.get("region"),
    }


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, math.ceil(pct / 100 * len(values)) - 1))
    return values[index]


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aleph-bench-") as tmp:
        summary = run(Path(tmp))
    save("pipeline", summary)
    return summary


def report(summary: dict[str, Any]) -> str:
    head = [
        f"{summary['completed']}/{summary['jobs']} jobs COMPLETED ({summary['clip']}, simulator answering at once)",
        f"one job at a time ({summary['solo_jobs']} jobs): sidecar upload -> COMPLETED p50 {summary['solo_latency_p50_seconds']:.2f} s,"
        f" max {summary['solo_latency_max_seconds']:.2f} s",
        f"{summary['jobs']} jobs at once: {summary['jobs_per_second']:.1f} jobs/s; sidecar upload -> COMPLETED p50 {summary['latency_p50_seconds']:.2f} s,"
        f" p95 {summary['latency_p95_seconds']:.2f} s (mostly waiting in the queue)",
        f"handler wall time per job {summary['handler_seconds_per_job'] * 1000:.0f} ms; CPU per job: "
        + ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in summary["cpu_seconds_per_job"].items()),
        "",
    ]
    rows = [
        [name, f"{f['invocations_per_job']:.2f}", f"{f['median_invocation_ms']:.0f} ms", f"{f['seconds_per_job'] * 1000:.0f} ms", f"{f['memory_mb']} MB"]
        for name, f in sorted(summary["functions"].items())
    ]
    calls = ", ".join(f"{name} {count:.2f}" for name, count in summary["aws_calls_per_job"].items())
    costs = [[name, f"${cost:.4f}"] for name, cost in summary["cost_per_1000_jobs"].items()]
    costs.append(["total AWS", f"${summary['cost_per_1000_jobs_total']:.4f}"])
    for name, price in summary["provider_price_per_1000_jobs"].items():
        costs.append([f"provider: {name}", f"${price:,.2f}" if price is not None else "unknown (not published in our documents)"])
    return "\n".join(
        [
            *head,
            table(["function", "invocations/job", "median invocation", "wall time/job", "memory"], rows),
            "",
            f"AWS calls per job by the handlers: {calls}",
            "",
            table(["cost per 1,000 jobs (us-east-1 list prices)", "USD"], costs),
            "",
            f"AWS cost per 1,000 jobs ${summary['cost_per_1000_jobs_total']:.4f} (target < ${TARGET_PER_1000:.2f}: {verdict(summary['target_met'])})",
        ]
    )


if __name__ == "__main__":
    print(report(main()))
    sys.exit(0)
