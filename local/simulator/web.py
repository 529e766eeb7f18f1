"""Request/response values shared by the HTTP plumbing and the protocol modules.

Protocol modules (``kie.py`` and later ``runware.py``, ``crun.py``) work on these plain values
instead of ``BaseHTTPRequestHandler`` so that adding a provider never touches the server code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Request:
    """One HTTP request; ``path`` is relative to the provider prefix (or the full path)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup (HTTP header names are case-insensitive)."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Response:
    """An HTTP answer; ``file`` streams a result file instead of ``body``; ``reset`` sends no
    answer at all and resets the connection instead."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None
    reset: bool = False


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(status=status, body=json.dumps(payload, ensure_ascii=False).encode("utf-8"))


def text_response(text: str, status: int) -> Response:
    return Response(status=status, body=text.encode("utf-8"), content_type="text/plain; charset=utf-8")


# What a load balancer in front of an API answers when the API behind it fails or is too slow
# (nginx's pages): HTML, whatever the client asked for.
GATEWAY_TITLES = {502: "502 Bad Gateway", 504: "504 Gateway Time-out"}


def gateway_response(status: int) -> Response:
    title = GATEWAY_TITLES[status]
    lines = ["<html>", f"<head><title>{title}</title></head>", "<body>", f"<center><h1>{title}</h1></center>"]
    lines += ["<hr><center>nginx</center>", "</body>", "</html>", ""]
    page = "\r\n".join(lines)
    return Response(status=status, body=page.encode("ascii"), content_type="text/html")


def connection_reset() -> Response:
    return Response(status=0, reset=True)


class Provider(Protocol):
    """What the server needs from a provider module: a base-path prefix and a handler."""

    name: str

    @property
    def prefix(self) -> str: ...

    def handle(self, request: Request) -> Response: ...
