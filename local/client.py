"""Helpers for tests and the demo: bounded waits, the stack's ``stack.json``, boto3 clients."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORKDIR = REPO_ROOT / ".local"
STACK_JSON = "stack.json"
LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.1,
    *,
    message: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy and return that; bounded by ``timeout``.

    Exceptions listed in ``ignore`` count as "not yet". Raises TimeoutError naming ``message``
    (and the last ignored exception, if any) when the time is up.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last_error, value = exc, None
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {message}{detail}")
        time.sleep(interval)


def stack_json_path(workdir: str | Path | None = None) -> Path:
    return Path(workdir or DEFAULT_WORKDIR) / STACK_JSON


def read_stack_info(workdir: str | Path | None = None) -> dict[str, Any]:
    """The running stack's ``stack.json`` (default: the repository's ``.local/``)."""
    info = json.loads(stack_json_path(workdir).read_text(encoding="utf-8"))
    if not isinstance(info, dict):
        raise ValueError(f"{stack_json_path(workdir)} is not a JSON object")
    return info


def aws_client(service: str, info: Mapping[str, Any] | None = None, *, endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A boto3 client for the local stack (``info`` is ``stack.json``; default: read it)."""
    import boto3
    from botocore.config import Config

    if endpoint_url is None:
        info = info if info is not None else read_stack_info()
        endpoint_url = str(info["s3_endpoint"])
        region = region or str(info.get("region", "us-east-1"))
    session = boto3.session.Session(region_name=region or "us-east-1", **LOCAL_CREDENTIALS)
    return session.client(
        service,
        endpoint_url=endpoint_url,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30),
    )


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str) -> bool:
    """True once something at ``url`` answers HTTP without a server error."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


@contextlib.contextmanager
def moto_server(timeout: float = 30.0) -> Iterator[str]:
    """moto server as a subprocess on a free port of 127.0.0.1; yields its URL (tests, benchmarks)."""
    url = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", url.rsplit(":", 1)[1]]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: process.poll() is None and answers(f"{url}/moto-api/"), timeout=timeout, interval=0.05, message="moto server")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
