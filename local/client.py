"""Helpers for tests and the demo: bounded waits, the stack's ``stack.json``, boto3 clients."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
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
