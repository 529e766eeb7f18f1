"""Finalize killed mid-copy leaves no partial object under the output prefix, and completes on retry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aleph_pipeline.finalize import finalize_job
from aleph_pipeline.jobs import JobStore

from .conftest import MP4_HEAD, clear_caches

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
SIZE_MIB = 40
JOB_ID = "fedcba9876543210fedcba9876543210"


class SlowResult(BaseHTTPRequestHandler):
    """Serves a 40 MiB result; while ``slow`` is set it trickles, so the copy can be killed midway."""

    slow = threading.Event()
    sent_enough = threading.Event()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(SIZE_MIB * MIB))
        self.end_headers()
        try:
            for index in range(SIZE_MIB):
                chunk = bytes([index % 256]) * MIB
                if index == 0:  # a real MP4 header: finalize checks the container it was asked for
                    chunk = MP4_HEAD + chunk[len(MP4_HEAD) :]
                self.wfile.write(chunk)
                if index >= 20:
                    SlowResult.sent_enough.set()
                if SlowResult.slow.is_set():
                    time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def result_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowResult)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/result.mp4"
    server.shutdown()


def test_killed_finalize_leaves_nothing_then_completes(aws: dict[str, Any], result_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESULT_HOSTS", json.dumps({"kie": ["127.0.0.1"]}))
    monkeypatch.setenv("ALLOW_HTTP_RESULT_URLS", "true")
    monkeypatch.setenv("CONFIRM_RESULTS_BY_POLLING", "false")  # this test is about the kill, not the confirmation
    clear_caches()
    prefix = f"shots/one/{JOB_ID}/"
    aws["table"].put_item(
        Item={
            "jobId": JOB_ID,
            "status": "SUCCEEDED",
            "provider": "kie",
            "model": "aleph",
            "outputPrefix": prefix,
            "sidecarJson": json.dumps({"prompt": "snow"}),
            "result": {"videos": [result_url]},
            "history": [{"state": "RECEIVED", "at": "t0"}, {"state": "SUBMITTED", "at": "t1"}, {"state": "SUCCEEDED", "at": "t2"}],
            "createdAt": "t0",
            "updatedAt": "t2",
        }
    )
    SlowResult.slow.set()
    SlowResult.sent_enough.clear()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "layers" / "domain")])}
    child = subprocess.Popen(
        [sys.executable, "-c", f"from aleph_pipeline.finalize import finalize_job; finalize_job({JOB_ID!r})"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not SlowResult.sent_enough.wait(timeout=0.1):
            assert child.poll() is None, f"finalize exited early: {child.stderr.read().decode() if child.stderr else ''}"
            assert time.monotonic() < deadline, "the copy never got going"
        assert child.poll() is None, "the copy finished before it could be interrupted"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)

    s3 = aws["s3"]
    assert s3.list_objects_v2(Bucket=aws["output"], Prefix=prefix).get("KeyCount", 0) == 0
    # The parts sent so far sit in an unfinished multipart upload: invisible, and removed by the
    # output bucket's abort-incomplete-multipart lifecycle rule.
    uploads = s3.list_multipart_uploads(Bucket=aws["output"]).get("Uploads", [])
    assert [upload["Key"] for upload in uploads] == [prefix + "result.mp4"]
    job = JobStore().get(JOB_ID)
    assert job is not None
    assert job.state.value == "SUCCEEDED"

    SlowResult.slow.clear()
    finalize_job(JOB_ID)  # the stream mapping's retry
    job = JobStore().get(JOB_ID)
    assert job is not None
    assert job.state.value == "COMPLETED"
    keys = sorted(entry["Key"] for entry in s3.list_objects_v2(Bucket=aws["output"], Prefix=prefix)["Contents"])
    assert keys == [prefix + "job.json", prefix + "result.mp4"]
    assert s3.head_object(Bucket=aws["output"], Key=prefix + "result.mp4")["ContentLength"] == SIZE_MIB * MIB
    tail = s3.get_object(Bucket=aws["output"], Key=prefix + "result.mp4", Range=f"bytes={SIZE_MIB * MIB - 1}-")["Body"].read()
    assert tail == bytes([(SIZE_MIB - 1) % 256])
