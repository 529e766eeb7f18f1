"""Finalize's copy of a result into S3: peak memory and throughput, against the naive copy and the limit.

Results of 10, 200 and 1024 MiB are served over HTTP on 127.0.0.1 by a subprocess that makes the
bytes on the fly (nothing that size is written to disk) and copied into a bucket of a moto server
subprocess. Each variant runs in a fresh Python process, so its peak RSS (``ru_maxrss``) is its
own:

- ``ours``: ``aleph_pipeline.storage.copy_url_to_s3`` with finalize's own download client (a
  streamed, managed multipart upload);
- ``naive``: the same client reads the whole body, then one ``put_object``;
- ``limit``: the same download into ``/dev/null`` (no upload at all).

Every child imports the same modules and builds the same S3 client before its clock starts, so
the memory they differ by is the copy's. The object is deleted after each run (moto keeps
objects in its own memory; its process is not the one measured).

``python -m bench.finalize`` prints a table and the targets, writes
``bench/results/finalize.json`` and draws ``bench/results/finalize-memory.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.common import MIB, RESULTS, child_env, median, save, table, verdict
from local.client import aws_client, free_port, moto_server

SIZES_MIB = (10, 200, 1024)
# Short copies are noisy: more runs of them (the median counts; peak RSS is the highest seen).
REPEATS = {10: 5, 200: 3, 1024: 1}
VARIANTS = ("limit", "naive", "ours")
BLOCK = bytes(range(256)) * 4096  # 1 MiB
BUCKET = "bench-finalize"
CHILD_TIMEOUT = 300


# ------------------------------------------------------------------------- result server


class _ResultHandler(BaseHTTPRequestHandler):
    """``GET /<bytes>`` answers that many bytes of a repeating pattern, made as they are sent."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        size = int(self.path.strip("/"))
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        view = memoryview(BLOCK)
        while size > 0:
            step = min(size, len(BLOCK))
            self.wfile.write(view[:step])
            size -= step

    def log_message(self, *args: object) -> None:
        pass


def serve(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), _ResultHandler)
    server.daemon_threads = True
    server.serve_forever()


@contextmanager
def result_server() -> Any:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.finalize", "serve", str(port)], env=child_env())
    url = f"http://127.0.0.1:{port}"
    try:
        from local.client import wait_for

        def up() -> bool:
            import socket

            if process.poll() is not None:
                raise RuntimeError("the result server exited")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_for(up, timeout=20, interval=0.05, message="the result server")
        yield url
    finally:
        process.terminate()
        process.wait(10)


# ------------------------------------------------------------------------------- a child


def run_child(variant: str, url: str, key: str) -> dict[str, Any]:
    """One copy in this (fresh) process; returns seconds, bytes and peak RSS."""
    from aleph_pipeline import storage
    from aleph_pipeline.finalize import _download_client

    s3 = storage.s3_client()
    http = _download_client()
    s3.head_bucket(Bucket=BUCKET)  # the connection and the client are warm before the clock starts
    baseline = _peak_rss()
    started = time.perf_counter()
    if variant == "ours":
        size = storage.copy_url_to_s3(http, url, BUCKET, key, allowed_hosts=("127.0.0.1",), allow_http=True, max_bytes=4 * 1024 * MIB, content_type="video/mp4")
    elif variant == "naive":
        response = http.get(url)
        response.raise_for_status()
        body = response.content
        size = len(body)
        s3.put_object(Bucket=BUCKET, Key=key, Body=body, ContentType="video/mp4")
        del body, response
    elif variant == "limit":
        size = 0
        with http.stream("GET", url) as response, open(os.devnull, "wb") as sink:  # noqa: PTH123
            for chunk in response.iter_bytes(chunk_size=MIB):
                sink.write(chunk)
                size += len(chunk)
    else:
        raise ValueError(f"unknown variant {variant}")
    seconds = time.perf_counter() - started
    peak = _peak_rss()
    if variant != "limit":
        stored = int(s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"])
        if stored != size:
            raise RuntimeError(f"{variant}: stored {stored} bytes, expected {size}")
        s3.delete_object(Bucket=BUCKET, Key=key)
    return {"variant": variant, "bytes": size, "seconds": seconds, "peak_rss": peak, "baseline_rss": baseline}


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure(variant: str, url: str, endpoint: str, key: str) -> dict[str, Any]:
    env = child_env({"AWS_ENDPOINT_URL": endpoint})
    done = subprocess.run(
        [sys.executable, "-m", "bench.finalize", "child", variant, url, key],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{variant} {url} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------------------ the run


def main() -> dict[str, Any]:
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {v: {s: [] for s in SIZES_MIB} for v in VARIANTS}
    with moto_server() as endpoint, result_server() as base:
        aws_client("s3", endpoint_url=endpoint, region="us-east-1").create_bucket(Bucket=BUCKET)
        for size in SIZES_MIB:
            for attempt in range(REPEATS[size]):
                # Interleaved, so a noisy moment on a shared machine hits every variant alike.
                for variant in VARIANTS:
                    result = measure(variant, f"{base}/{size * MIB}", endpoint, f"{variant}-{size}-{attempt}.mp4")
                    runs[variant][size].append(result)
                    rate, peak = size / result["seconds"], result["peak_rss"] / MIB
                    print(
                        f"  {variant:5} {size:5} MiB  {result['seconds']:6.2f} s  {rate:7.1f} MiB/s  peak RSS {peak:7.1f} MiB",
                        file=sys.stderr,
                        flush=True,
                    )
    summary: dict[str, Any] = {"sizes_mib": list(SIZES_MIB), "variants": {}}
    for variant in VARIANTS:
        rows = {}
        for size in SIZES_MIB:
            samples = runs[variant][size]
            rows[str(size)] = {
                "peak_rss_mib": max(r["peak_rss"] for r in samples) / MIB,
                "baseline_rss_mib": median([r["baseline_rss"] for r in samples]) / MIB,
                "throughput_mib_s": median([size / r["seconds"] for r in samples]),
                "runs": len(samples),
            }
        summary["variants"][variant] = rows
    ours, naive, limit = (summary["variants"][v] for v in ("ours", "naive", "limit"))
    big, small = str(SIZES_MIB[-1]), str(SIZES_MIB[0])
    summary["ratios"] = {
        "ours_rss_1g_over_10m": ours[big]["peak_rss_mib"] / ours[small]["peak_rss_mib"],
        "ours_rss_over_naive_1g": ours[big]["peak_rss_mib"] / naive[big]["peak_rss_mib"],
        "ours_throughput_over_naive": {s: ours[s]["throughput_mib_s"] / naive[s]["throughput_mib_s"] for s in ours},
        "ours_throughput_over_limit": {s: ours[s]["throughput_mib_s"] / limit[s]["throughput_mib_s"] for s in ours},
    }
    ratios = summary["ratios"]
    summary["targets"] = {
        "rss_1g_within_1.25x_of_10m": ratios["ours_rss_1g_over_10m"] <= 1.25,
        "rss_1g_below_third_of_naive": ratios["ours_rss_over_naive_1g"] < 1 / 3,
        "throughput_at_least_0.8x_naive": all(r >= 0.8 for r in ratios["ours_throughput_over_naive"].values()),
    }
    save("finalize", summary)
    plot(summary)
    return summary


def report(summary: dict[str, Any]) -> str:
    rows = []
    for size in summary["sizes_mib"]:
        for variant in VARIANTS:
            row = summary["variants"][variant][str(size)]
            rows.append([f"{size} MiB", variant, f"{row['peak_rss_mib']:.0f} MiB", f"{row['throughput_mib_s']:.0f} MiB/s"])
    ratios, targets = summary["ratios"], summary["targets"]
    lines = [
        table(["result", "copy", "peak RSS", "throughput"], rows),
        "",
        f"ours: peak RSS at 1 GiB / at 10 MiB      {ratios['ours_rss_1g_over_10m']:.2f}x  (target <= 1.25x: {verdict(targets['rss_1g_within_1.25x_of_10m'])})",
        f"ours / naive peak RSS at 1 GiB           {ratios['ours_rss_over_naive_1g']:.2f}x"
        f"  (target < 0.33x: {verdict(targets['rss_1g_below_third_of_naive'])})",
        "ours / naive throughput                  "
        + ", ".join(f"{s} MiB {r:.2f}x" for s, r in ratios["ours_throughput_over_naive"].items())
        + f"  (target >= 0.8x: {verdict(targets['throughput_at_least_0.8x_naive'])})",
        "ours / limit throughput (download only)  " + ", ".join(f"{s} MiB {r:.2f}x" for s, r in ratios["ours_throughput_over_limit"].items()),
    ]
    return "\n".join(lines)


def plot(summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = summary["sizes_mib"]
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    styles = {"ours": ("streamed multipart (ours)", "o-"), "naive": ("read whole body + one put_object", "s--"), "limit": ("download to /dev/null", "^:")}
    for variant, (label, style) in styles.items():
        axes.plot(sizes, [summary["variants"][variant][str(s)]["peak_rss_mib"] for s in sizes], style, label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xticks(sizes, [f"{s} MiB" for s in sizes])
    axes.set_xlabel("result size")
    axes.set_ylabel("peak RSS of the copying process (MiB)")
    axes.set_title("Finalize copy into S3 (moto): peak memory against result size")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(RESULTS / "finalize-memory.png")
    plt.close(figure)


def _cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.finalize")
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve")
    serve_parser.add_argument("port", type=int)
    child = sub.add_parser("child")
    child.add_argument("variant", choices=VARIANTS)
    child.add_argument("url")
    child.add_argument("key")
    args = parser.parse_args()
    if args.command == "serve":
        threading.current_thread().name = "result-server"
        serve(args.port)
        return 0
    if args.command == "child":
        print(json.dumps(run_child(args.variant, args.url, args.key)))
        return 0
    print(report(main()))
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
