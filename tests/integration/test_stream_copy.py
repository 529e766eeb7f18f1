"""Finalize's copy from a result URL into S3 (moto server) streams: memory does not follow size."""

from __future__ import annotations

import hashlib
import threading
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import httpx
import pytest

from aleph_pipeline import storage
from aleph_pipeline.errors import JobError

MIB = 1024 * 1024
BLOCK = bytes(range(256)) * 4096  # 1 MiB of a repeating, checkable pattern


class ResultServer(BaseHTTPRequestHandler):
    """Serves /<n>mb as n MiB of the pattern, /gone as 410, and /hop -> a redirect elsewhere."""

    def do_GET(self) -> None:
        if self.path == "/gone":
            self.send_response(410)
            self.end_headers()
            return
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "https://169.254.169.254/latest/meta-data")
            self.end_headers()
            return
        size = int(self.path.strip("/").removesuffix("mb")) * MIB
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        for _ in range(size // MIB):
            self.wfile.write(BLOCK)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def result_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ResultServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def bucket(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    storage.s3_client.cache_clear()
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket="copy-target")
    yield "copy-target"  # type: ignore[misc]
    storage.s3_client.cache_clear()


def copy(url: str, bucket: str, key: str, max_bytes: int = 2 * 1024 * MIB) -> int:
    with httpx.Client(timeout=30) as http:
        return storage.copy_url_to_s3(http, url, bucket, key, allowed_hosts=("127.0.0.1",), allow_http=True, max_bytes=max_bytes)


def peak_while_copying(url: str, bucket: str, key: str) -> int:
    storage.s3_client()  # the client's own setup is not part of the copy
    tracemalloc.start()
    try:
        copy(url, bucket, key)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_copy_memory_does_not_grow_with_size(result_url: str, bucket: str) -> None:
    small = peak_while_copying(f"{result_url}/5mb", bucket, "small.mp4")
    large = peak_while_copying(f"{result_url}/100mb", bucket, "large.mp4")
    print(f"peak traced memory: 5 MB copy {small / MIB:.1f} MiB, 100 MB copy {large / MIB:.1f} MiB")
    # Bounded by a few 8 MiB parts, nowhere near the 100 MiB the copy moved.
    assert large < 48 * MIB
    assert large < small + 40 * MIB
    s3 = storage.s3_client()
    head = s3.head_object(Bucket=bucket, Key="large.mp4")
    assert head["ContentLength"] == 100 * MIB
    assert head["ContentType"] == "video/mp4"
    body = s3.get_object(Bucket=bucket, Key="large.mp4", Range=f"bytes={50 * MIB}-{51 * MIB - 1}")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(BLOCK).digest()


def test_over_the_cap_leaves_no_object(result_url: str, bucket: str) -> None:
    with pytest.raises(JobError) as caught:
        copy(f"{result_url}/20mb", bucket, "capped.mp4", max_bytes=10 * MIB)
    assert caught.value.code == "result_unavailable"
    listed = storage.s3_client().list_objects_v2(Bucket=bucket, Prefix="capped")
    assert listed.get("KeyCount", 0) == 0
    uploads = storage.s3_client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert not [upload for upload in uploads if upload["Key"] == "capped.mp4"]


def test_expired_result_and_foreign_redirect(result_url: str, bucket: str) -> None:
    with pytest.raises(JobError) as gone:
        copy(f"{result_url}/gone", bucket, "gone.mp4")
    assert gone.value.code == "result_unavailable"
    with pytest.raises(JobError) as redirected:
        copy(f"{result_url}/redirect", bucket, "redirect.mp4")
    assert redirected.value.code == "result_rejected"
