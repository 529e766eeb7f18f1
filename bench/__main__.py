"""``python -m bench`` (what ``make bench`` runs): every benchmark, then one table of the targets."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from bench import coldstart, finalize, package, pipeline, scale
from bench.common import MIB, table, verdict

BENCHMARKS: list[tuple[str, Any]] = [
    ("Package size (sam build)", package),
    ("Cold start", coldstart),
    ("Finalize copy", finalize),
    ("Pipeline", pipeline),
    ("Scale (a paced provider)", scale),
]


def summary_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows: list[list[str]] = []
    if "Finalize copy" in results:
        f = results["Finalize copy"]
        ratios, targets = f["ratios"], f["targets"]
        rows.append(
            ["finalize: our peak RSS 1 GiB / 10 MiB", f"{ratios['ours_rss_1g_over_10m']:.2f}x", "<= 1.25x", verdict(targets["rss_1g_within_1.25x_of_10m"])]
        )
        rows.append(
            ["finalize: our / naive peak RSS at 1 GiB", f"{ratios['ours_rss_over_naive_1g']:.2f}x", "< 0.33x", verdict(targets["rss_1g_below_third_of_naive"])]
        )
        worst = min(ratios["ours_throughput_over_naive"].values())
        rows.append(["finalize: our / naive throughput (worst size)", f"{worst:.2f}x", ">= 0.8x", verdict(targets["throughput_at_least_0.8x_naive"])])
    if "Cold start" in results:
        c = results["Cold start"]["targets"]
        for name in coldstart.HANDLERS:
            rows.append([f"cold start: {name} init + first use / import boto3", f"{c[name]['ratio']:.2f}x", f"<= {coldstart.TARGET}x", verdict(c[name]["met"])])
    if "Pipeline" in results:
        p = results["Pipeline"]
        rows.append(
            ["pipeline: AWS cost per 1,000 jobs", f"${p['cost_per_1000_jobs_total']:.4f}", f"< ${pipeline.TARGET_PER_1000:.2f}", verdict(p["target_met"])]
        )
        rows.append(
            [
                "pipeline: jobs/s, p50, p95 (200 at once)",
                f"{p['jobs_per_second']:.1f}, {p['latency_p50_seconds']:.1f} s, {p['latency_p95_seconds']:.1f} s",
                "",
                "",
            ]
        )
    if "Scale (a paced provider)" in results:
        k = results["Scale (a paced provider)"]
        clean = not k["failed"] and not k["submitted_twice"]
        rows.append([f"scale: {k['jobs']} jobs at once, failed / sent twice", f"{k['failed']} / {k['submitted_twice']}", "0 / 0", verdict(clean)])
        ratio = f"{k['rate_ratio']:.2f}, {k['provider_429s']}"
        rows.append([f"scale: submit rate / limit ({k['limit']}), 429s", ratio, f">= {scale.TARGET_RATIO}", verdict(k["rate_ratio"] >= scale.TARGET_RATIO)])
        if "chain" in k:
            c = k["chain"]
            moved = f"{c['moved_to_apikley']}/{c['jobs'] - 1} / {c['failed']} / {c['submitted_twice']}"
            rows.append([f"scale: chain {c['chain']}, kie exhausted: moved / failed / sent twice", moved, "all / 0 / 0", verdict(c["target_met"])])
        if "inflight" in k:
            f = k["inflight"]
            held = f"{f['max_running']} / {f['throttled']} / {f['failed']} / {f['submitted_twice']}"
            rows.append(
                [
                    f"scale: Runway, {f['limit']} in flight: most running / throttled / failed / sent twice",
                    held,
                    f"<= {f['limit']} / 0 / 0 / 0",
                    verdict(f["target_met"]),
                ]
            )
    if "Package size (sam build)" in results:
        k = results["Package size (sam build)"]
        layer = k["artifacts"]["SharedLayer"]
        rows.append(["package: layer unzipped (zipped)", f"{layer['unzipped_bytes'] / MIB:.1f} MiB ({layer['zipped_bytes'] / MIB:.1f} MiB)", "", ""])
        rows.append(["package: boto3 not packaged", "", "", verdict(k["boto3_not_packaged"])])
    return rows


def main() -> int:
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    for title, module in BENCHMARKS:
        print(f"\n== {title} ({module.__name__.replace('.', '/')}.py)\n", flush=True)
        run: Callable[[], dict[str, Any]] = module.main
        results[title] = run()
        print(module.report(results[title]), flush=True)
    print(f"\n== Targets (make bench took {time.monotonic() - started:.0f} s)\n")
    print(table(["measure", "result", "target", ""], summary_rows(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
