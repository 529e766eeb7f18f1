"""Shared pieces of the benchmarks: medians, a table, saved results (moto server and free ports come from local.client)."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from local.client import REPO_ROOT, aws_client

RESULTS = REPO_ROOT / "bench" / "results"
MIB = 1024 * 1024
# Fake credentials: a benchmark never reaches AWS.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, columns sized to their content."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def save(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` (what ``bench/report.py`` gathers)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(AWS_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "layers" / "domain")])
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(key, None)
    env.update(extra or {})
    return env


UPLOAD_THREADS = 4


def epoch(text: str) -> float:
    """Epoch seconds of an ISO 8601 time as the jobs table and the simulator write them."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))] if ordered else 0.0


def drop_pairs(info: dict[str, Any], clip: bytes, jobs: int, name: str, sidecar: dict[str, Any]) -> dict[str, float]:
    """Upload ``jobs`` pairs at once from ``UPLOAD_THREADS`` threads; each sidecar key's upload time."""
    s3 = aws_client("s3", info)
    bucket, prefix = info["input_bucket"], info["input_prefix"]
    dropped_at: dict[str, float] = {}

    def upload(index: int) -> None:
        stem = f"{prefix}{name}/job-{index:05d}"
        s3.put_object(Bucket=bucket, Key=f"{stem}.mp4", Body=clip)
        dropped_at[f"{stem}.json"] = time.time()
        s3.put_object(Bucket=bucket, Key=f"{stem}.json", Body=json.dumps({"prompt": "make it snow", **sidecar}).encode())

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(upload, range(jobs)))
    return dropped_at
