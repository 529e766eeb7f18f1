"""boto3 clients the domain shares: made on first use (not at import: cold starts), one per service."""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def client(service: str) -> Any:
    import boto3

    return boto3.client(service)
