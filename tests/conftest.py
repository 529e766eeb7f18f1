"""Shared test setup: fake AWS credentials, handler settings, and a moto server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

# Before anything imports boto3 or the settings: no test may reach a real AWS account.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "aleph-pipeline-tests",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "JOBS_TABLE_NAME": "aleph-jobs",
        "INPUT_BUCKET_NAME": "aleph-input",
        "OUTPUT_BUCKET_NAME": "aleph-output",
        "CALLBACK_API_URL": "https://callbacks.example.test",
        "PROVIDER_SECRET_ID": "aleph/provider-keys",
    }
)
os.environ.pop("AWS_PROFILE", None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server subprocess; yields its URL. Tests reach it over real HTTP."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/moto-api/", timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)
