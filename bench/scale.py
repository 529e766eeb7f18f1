"""Jobs dropped at once against a provider limit below the stack's own capacity: paced, none failed.

The stack is the one ``make local`` runs (``local.stack.spawn``: moto server, the simulator, the
real handlers), with kie's pace set to the simulator's own limit, kie's documented one
(``PROVIDER_RATE_LIMITS`` ``{"kie": "20/10"}`` beside ``/_sim/limits {"kie": "20/10"}``, a
sliding window): two new tasks a second, below the 4 to 5 jobs a second the stack completes unpaced (``bench/pipeline.py``). Every
pair (a 1-second 160x90 clip and its sidecar) is uploaded at once from four threads; the run ends
when every job has left RECEIVED (its provider task exists) or failed.

Printed: jobs failed (must be 0), jobs submitted twice (0: the simulator's tasks by the job id
in their callback URL), the simulator's 429 count (``/_sim/limits``), the achieved submit rate
(tasks created by the simulator over the span from the first to the last) as a ratio of the
limit (target >= 0.9), and the wait for a slot (from the sidecar's upload to SUBMITTED, the
submit queue included) at p50 and p95 beside the least a queue at that rate allows (job k of N
waits k / rate).
``python -m bench.scale --jobs N`` runs N jobs (default 600, 5 minutes at 2 a second; ``make
bench`` runs the same).

Then the chain: a stack of its own where kie's limit is exhausted (one task per 10 minutes, the
stack's pace and the simulator's) and ``PaceMaxWaitSeconds`` is 60, and ``--chain-jobs`` pairs
whose sidecars name the chain ``kie,apikley`` (apikley paced at 2 a second as above). The first
takes kie's one slot; every other job's kie slot is 10 minutes out, past the bound, so it moves,
unsent, to apikley. Printed: the jobs that moved to apikley (target: all but the first), failed
(0) and sent twice (0, counted over both providers' tasks).

Last, tasks in flight (``bench.inflight``): Runway jobs against a limit of two running at once,
counted by the simulator.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench import inflight
from bench.common import drop_pairs, epoch, percentile, save, table, verdict
from bench.pipeline import _scan
from local.client import aws_client, wait_for
from local.media import make_clip
from local.stack import spawn, terminate

JOBS = 600  # 5 minutes of submissions at 2 a second
LIMIT = "20/10"  # kie's documented limit, 2 new tasks a second in a sliding 10 s window: the simulator's and the stack's
RATE = 2.0
TARGET_RATIO = 0.9
CHAIN_JOBS = 30  # 15 s of apikley at 2 a second: with the paced run, the scale step stays near 2 minutes
CHAIN = ["kie", "apikley"]
EXHAUSTED = "1/600"  # kie's one task per 10 minutes: every job after the first would wait past the bound
CHAIN_MAX_WAIT_SECONDS = 60


def _job_of(task: dict[str, Any]) -> str:
    """The job id a kie task was made for: the callback URL is ``.../callbacks/kie/<jobId>?token=...``."""
    return urlsplit(str(task["request"].get("callBackUrl", ""))).path.rsplit("/", 1)[-1]


def _wait_all_left_received(info: dict[str, Any], jobs: int, timeout: float) -> list[dict[str, Any]]:
    dynamodb = aws_client("dynamodb", info)

    def all_moved_on() -> list[dict[str, Any]] | None:
        items = [item for item in _scan(dynamodb, info["jobs_table"]) if "sidecarKey" in item]
        moved = [item for item in items if item["status"] != "RECEIVED"]
        return items if len(items) == jobs and len(moved) == jobs else None

    found: list[dict[str, Any]] = wait_for(all_moved_on, timeout=timeout, interval=2.0, message=f"all {jobs} jobs to leave RECEIVED")
    return found


def run_chain(workdir: Path, clip: bytes, jobs: int) -> dict[str, Any]:
    """The chain ``kie,apikley`` with kie's limit exhausted: every job but the first moves to apikley."""
    limits = {"kie": EXHAUSTED, "apikley": LIMIT}
    env = ["--env", f"PROVIDER_RATE_LIMITS={json.dumps(limits)}", "--env", f"PACE_MAX_WAIT_SECONDS={CHAIN_MAX_WAIT_SECONDS}"]
    process, info = spawn(workdir / "chain-stack", "--quiet", *env, timeout=90)
    sim = info["simulator_url"]
    try:
        httpx.post(f"{sim}/_sim/config", json={"delay_seconds": 0}, timeout=10).raise_for_status()
        httpx.post(f"{sim}/_sim/limits", json=limits, timeout=10).raise_for_status()
        drop_pairs(info, clip, jobs, "chain", {"providers": CHAIN})
        items = _wait_all_left_received(info, jobs, timeout=jobs / RATE + 120)
        tasks = httpx.get(f"{sim}/_sim/tasks", timeout=30).json()
        stats = httpx.get(f"{sim}/_sim/limits", timeout=10).json()
    finally:
        terminate(process)
    failed = [item for item in items if item["status"] == "FAILED"]
    per_job = Counter(_job_of(task) for task in tasks)
    moved = [item for item in items if item.get("provider") == "apikley" and [t.get("provider") for t in item.get("providersTried", [])] == ["kie"]]
    return {
        "jobs": jobs,
        "chain": ",".join(CHAIN),
        "kie_limit": EXHAUSTED,
        "max_wait_seconds": CHAIN_MAX_WAIT_SECONDS,
        "moved_to_apikley": len(moved),
        "sent_to_kie": sum(1 for task in tasks if task["provider"] == "kie"),
        "failed": len(failed),
        "failed_codes": dict(Counter(str((item.get("error") or {}).get("code")) for item in failed)),
        "submitted_twice": sum(1 for count in per_job.values() if count > 1),
        "provider_429s": sum(int(entry.get("refused", 0)) for entry in stats.values()),
        "reasons": sorted({str(tried.get("reason")) for item in moved for tried in item.get("providersTried", [])})[:3],
        "target_met": not failed and all(count == 1 for count in per_job.values()) and len(moved) == jobs - 1,
    }


def run(workdir: Path, jobs: int) -> dict[str, Any]:
    clip = make_clip(workdir / "clip.mp4", seconds=1, size="160x90", rate=24).read_bytes()
    limits = json.dumps({"kie": LIMIT})
    process, info = spawn(workdir / "stack", "--quiet", "--env", f"PROVIDER_RATE_LIMITS={limits}", timeout=90)
    sim = info["simulator_url"]
    try:
        httpx.post(f"{sim}/_sim/config", json={"delay_seconds": 0}, timeout=10).raise_for_status()
        httpx.post(f"{sim}/_sim/limits", json={"kie": LIMIT}, timeout=10).raise_for_status()
        started = time.time()
        dropped_at = drop_pairs(info, clip, jobs, "scale", {"provider": "kie"})
        uploaded = time.time() - started
        # The last job's slot is jobs / RATE seconds out; then a margin for the stack to catch up.
        items = _wait_all_left_received(info, jobs, timeout=jobs / RATE + 120)
        tasks = [task for task in httpx.get(f"{sim}/_sim/tasks", timeout=30).json() if task["provider"] == "kie"]
        stats = httpx.get(f"{sim}/_sim/limits", timeout=10).json().get("kie", {})
    finally:
        terminate(process)
    created = sorted(epoch(task["created_at"]) for task in tasks)
    span = created[-1] - created[0] if len(created) > 1 else 0.0
    achieved = (len(created) - 1) / span if span else 0.0
    waits: list[float] = []
    for item in items:
        if "submittedAt" in item:  # from the sidecar's upload: the submit queue is part of the wait
            waits.append(epoch(item["submittedAt"]) - dropped_at[item["sidecarKey"]])
    per_job = Counter(_job_of(task) for task in tasks)
    failed = [item for item in items if item["status"] == "FAILED"]
    return {
        "jobs": jobs,
        "limit": LIMIT,
        "uploaded_seconds": uploaded,
        "failed": len(failed),
        "failed_codes": dict(Counter(str((item.get("error") or {}).get("code")) for item in failed)),
        "submitted_twice": sum(1 for count in per_job.values() if count > 1),
        "tasks": len(tasks),
        "provider_429s": int(stats.get("refused", 0)),
        "submit_rate_per_second": achieved,
        "rate_ratio": achieved / RATE,
        "submit_span_seconds": span,
        "largest_gaps_seconds": sorted((round(b - a, 2) for a, b in itertools.pairwise(created)), reverse=True)[:8],
        # Tasks created in each 30 s from the first: where the rate was lost (the drop's first
        # minute, a stall) shows here.
        "tasks_per_30s": [sum(1 for at in created if start <= at - created[0] < start + 30) for start in range(0, int(span) + 1, 30)],
        "slot_wait_p50_seconds": percentile(waits, 50),
        "slot_wait_p95_seconds": percentile(waits, 95),
        "ideal_wait_p95_seconds": 0.95 * jobs / RATE,
        "target_met": not failed and all(count == 1 for count in per_job.values()) and achieved / RATE >= TARGET_RATIO,
    }


def run_all(workdir: Path, jobs: int, chain_jobs: int, inflight_jobs: int) -> dict[str, Any]:
    summary = run(workdir, jobs)
    if chain_jobs > 0:
        clip = (workdir / "clip.mp4").read_bytes()
        summary["chain"] = run_chain(workdir, clip, chain_jobs)
        summary["target_met"] = summary["target_met"] and summary["chain"]["target_met"]
    if inflight_jobs > 0:
        summary["inflight"] = inflight.run(workdir / "inflight", inflight_jobs)
        summary["target_met"] = summary["target_met"] and summary["inflight"]["target_met"]
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=JOBS, help=f"jobs dropped at once (default {JOBS})")
    parser.add_argument("--chain-jobs", type=int, default=CHAIN_JOBS, help=f"jobs of the chain run, kie exhausted (default {CHAIN_JOBS}; 0: none)")
    parser.add_argument("--inflight-jobs", type=int, default=inflight.JOBS, help=f"Runway jobs of the tasks-in-flight run (default {inflight.JOBS}; 0: none)")
    args = parser.parse_args(argv or [])
    with tempfile.TemporaryDirectory(prefix="aleph-bench-scale-") as tmp:
        summary = run_all(Path(tmp), args.jobs, args.chain_jobs, args.inflight_jobs)
    save("scale", summary)
    return summary


def report(summary: dict[str, Any]) -> str:
    rows = [
        ["jobs dropped at once", str(summary["jobs"]), "", ""],
        ["jobs failed", str(summary["failed"]), "0", verdict(summary["failed"] == 0)],
        ["jobs submitted twice", str(summary["submitted_twice"]), "0", verdict(summary["submitted_twice"] == 0)],
        ["provider 429s (the simulator's count)", str(summary["provider_429s"]), "0, or explained", ""],
        [
            f"submit rate / limit ({summary['limit']} tasks/s)",
            f"{summary['submit_rate_per_second']:.2f}/s = {summary['rate_ratio']:.2f}",
            f">= {TARGET_RATIO}",
            verdict(summary["rate_ratio"] >= TARGET_RATIO),
        ],
        [
            "wait for a slot p50, p95 (least possible p95)",
            f"{summary['slot_wait_p50_seconds']:.0f} s, {summary['slot_wait_p95_seconds']:.0f} s ({summary['ideal_wait_p95_seconds']:.0f} s)",
            "",
            "",
        ],
    ]
    chain = summary.get("chain")
    if chain:
        rows += [
            [f"chain {chain['chain']}, kie at {chain['kie_limit']}: jobs dropped", str(chain["jobs"]), "", ""],
            [
                f"moved to apikley (no kie slot within {chain['max_wait_seconds']} s)",
                str(chain["moved_to_apikley"]),
                str(chain["jobs"] - 1),
                verdict(chain["moved_to_apikley"] == chain["jobs"] - 1),
            ],
            ["chain: jobs failed", str(chain["failed"]), "0", verdict(chain["failed"] == 0)],
            ["chain: jobs sent twice (kie and apikley)", str(chain["submitted_twice"]), "0", verdict(chain["submitted_twice"] == 0)],
            ["chain: provider 429s", str(chain["provider_429s"]), "0, or explained", ""],
        ]
    if "inflight" in summary:
        rows += inflight.rows(summary["inflight"])
    note = f"uploads took {summary['uploaded_seconds']:.0f} s; {summary['tasks']} kie tasks over {summary['submit_span_seconds']:.0f} s"
    if chain:
        note += f"; chain: {chain['sent_to_kie']} sent to kie, e.g. {'; '.join(chain['reasons'])}"
    return table(["measure", "result", "target", ""], rows) + "\n" + note


if __name__ == "__main__":
    result = main(sys.argv[1:])
    print(report(result))
    sys.exit(0 if result["target_met"] else 1)
