"""Runway jobs dropped at once against a limit of tasks in flight: every job done, the provider's
own count of tasks running at once within the limit, and none of ours queued by it.

The stack is the one ``make local`` runs (``local.stack.spawn``), with ``PROVIDER_CONCURRENCY``
``{"runway": 2}`` beside the simulator's Runway concurrency 2 (over it the simulator queues a task
as THROTTLED, as Runway does). ``jobs`` pairs (a 1-second 160x90 clip and a sidecar naming Runway)
are uploaded at once; the run ends when every job is COMPLETED or FAILED.

Printed: jobs failed (0), jobs submitted twice (0: the simulator's tasks that no job records as
its task), the simulator's ``maxRunning`` (the most Runway tasks it ran at once: at most the limit)
and ``throttled`` (tasks it had to queue: 0 when the client's limit held), and the p95 wait from a
sidecar's upload to SUBMITTED (the slot, and the submit queue).

``python -m bench.inflight --jobs N`` (default 12: well under a minute).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.common import drop_pairs, epoch, percentile, save, table, verdict
from bench.pipeline import _scan
from local.client import aws_client, wait_for
from local.media import make_clip
from local.stack import spawn, terminate

JOBS = 12
LIMIT = 2  # the stack's Runway tasks in flight, and the simulator's Runway concurrency
TASK_SECONDS = 3  # the simulator's time per task
TERMINAL = frozenset({"COMPLETED", "FAILED"})


def _wait_all_done(info: dict[str, Any], jobs: int, timeout: float) -> list[dict[str, Any]]:
    dynamodb = aws_client("dynamodb", info)

    def all_done() -> list[dict[str, Any]] | None:
        items = [item for item in _scan(dynamodb, info["jobs_table"]) if "sidecarKey" in item]
        return items if len(items) == jobs and all(item["status"] in TERMINAL for item in items) else None

    found: list[dict[str, Any]] = wait_for(all_done, timeout=timeout, interval=1.0, message=f"all {jobs} Runway jobs to finish")
    return found


def run(workdir: Path, jobs: int) -> dict[str, Any]:
    clip = make_clip(workdir / "clip.mp4", seconds=1, size="160x90", rate=24).read_bytes()
    process, info = spawn(workdir / "stack", "--quiet", "--env", f"PROVIDER_CONCURRENCY={json.dumps({'runway': LIMIT})}", timeout=90)
    sim = info["simulator_url"]
    try:
        # Each task runs a few seconds, so a wave's two overlap at the provider: the limit is reached, and held.
        httpx.post(f"{sim}/_sim/config", json={"delay_seconds": TASK_SECONDS}, timeout=10).raise_for_status()
        httpx.post(f"{sim}/runway/_sim/config", json={"concurrency": LIMIT, "resetCounts": True}, timeout=10).raise_for_status()
        started = time.time()
        dropped_at = drop_pairs(info, clip, jobs, "inflight", {"provider": "runway"})
        # Each wave of LIMIT jobs takes its poll loop (6 s first poll) and a recheck (5-15 s): a margin of 60 s a wave.
        items = _wait_all_done(info, jobs, timeout=60 * (jobs / LIMIT) + 60)
        elapsed = time.time() - started
        tasks = [task for task in httpx.get(f"{sim}/_sim/tasks", timeout=30).json() if task["provider"] == "runway"]
        counts = httpx.get(f"{sim}/runway/_sim/config", timeout=10).json()
    finally:
        terminate(process)
    failed = [item for item in items if item["status"] == "FAILED"]
    # A job records one task id: any other task the provider made for us is a second send.
    recorded = {str(item.get("providerTaskId")) for item in items}
    submitted_twice = sum(1 for task in tasks if str(task["taskId"]) not in recorded)
    waits = [epoch(item["submittedAt"]) - dropped_at[item["sidecarKey"]] for item in items if "submittedAt" in item]
    return {
        "jobs": jobs,
        "limit": LIMIT,
        "failed": len(failed),
        "failed_codes": dict(Counter(str((item.get("error") or {}).get("code")) for item in failed)),
        "tasks": len(tasks),
        "submitted_twice": submitted_twice,
        "max_running": int(counts["maxRunning"]),
        "throttled": int(counts["throttled"]),
        "slot_wait_p95_seconds": percentile(waits, 95),
        "elapsed_seconds": elapsed,
        "target_met": not failed and submitted_twice == 0 and int(counts["maxRunning"]) <= LIMIT and int(counts["throttled"]) == 0,
    }


def rows(summary: dict[str, Any]) -> list[list[str]]:
    """[measure, result, target, verdict] rows, as ``bench.scale.report`` prints them."""
    limit = summary["limit"]
    return [
        [f"Runway jobs dropped at once (limit {limit} in flight)", str(summary["jobs"]), "", ""],
        ["in flight: jobs failed", str(summary["failed"]), "0", verdict(summary["failed"] == 0)],
        ["in flight: jobs submitted twice", str(summary["submitted_twice"]), "0", verdict(summary["submitted_twice"] == 0)],
        ["most Runway tasks running at once (the simulator's count)", str(summary["max_running"]), f"<= {limit}", verdict(summary["max_running"] <= limit)],
        ["Runway tasks the provider throttled", str(summary["throttled"]), "0", verdict(summary["throttled"] == 0)],
        ["in flight: wait for a slot p95", f"{summary['slot_wait_p95_seconds']:.0f} s", "", ""],
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.inflight", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=JOBS, help=f"Runway jobs dropped at once (default {JOBS})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aleph-bench-inflight-") as tmp:
        summary = run(Path(tmp), args.jobs)
    save("inflight", summary)
    return summary


if __name__ == "__main__":
    result = main(sys.argv[1:])
    print(table(["measure", "result", "target", ""], rows(result)))
    print(f"{result['tasks']} Runway tasks in {result['elapsed_seconds']:.0f} s")
    sys.exit(0 if result["target_met"] else 1)
