"""An API Gateway HTTP API (payload format 2.0) in front of a function, on 127.0.0.1.

Requests that match one of the routes become the exact v2.0 event; the function's answer becomes
the HTTP response with API Gateway's rules: a dict with ``statusCode`` is taken as is (headers,
cookies, body, isBase64Encoded); anything else is a 200 with the answer as a JSON body. Unknown
routes get 404 ``{"message":"Not Found"}``, bodies over 10 MB 413, a failing function 500.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from local.lambda_runtime import LOCAL_ACCOUNT_ID, LambdaFunction

log = logging.getLogger("local.apigw")

MAX_BODY_BYTES = 10 * 1024 * 1024  # HTTP API's payload limit
_TEXT_TYPES = re.compile(r"^(text/.*|application/(json|xml|javascript|x-javascript|ecmascript|graphql)|application/[^;]*\+(json|xml))$")


@dataclass(frozen=True)
class Route:
    """``METHOD /path/{param}/{greedy+}``; method ``ANY`` matches every method."""

    method: str
    path: str
    function: str | None = None  # the function that serves it (None: the emulator's default one)

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"

    def match(self, method: str, raw_path: str) -> dict[str, str] | None:
        """Path parameters when ``method raw_path`` is this route, else None."""
        if self.method not in ("ANY", method.upper()):
            return None
        wanted = self.path.strip("/").split("/") if self.path.strip("/") else []
        got = raw_path.strip("/").split("/") if raw_path.strip("/") else []
        if raw_path.endswith("/") and raw_path != "/" and not self.path.endswith("/"):
            return None
        params: dict[str, str] = {}
        for index, segment in enumerate(wanted):
            if segment.startswith("{") and segment.endswith("+}"):
                rest = got[index:]
                if not rest:
                    return None
                params[segment[1:-2]] = unquote("/".join(rest))
                return params
            if index >= len(got):
                return None
            if segment.startswith("{") and segment.endswith("}"):
                if not got[index]:
                    return None
                params[segment[1:-1]] = unquote(got[index])
            elif segment != got[index]:
                return None
        return params if len(got) == len(wanted) else None


def find_route(routes: Iterable[Route], method: str, raw_path: str) -> tuple[Route, dict[str, str]] | None:
    """The most specific matching route (literal segments beat parameters, like API Gateway)."""
    found = [(r, p) for r in routes if (p := r.match(method, raw_path)) is not None]
    if not found:
        return None
    return max(found, key=lambda rp: (len(rp[0].path.split("/")) - rp[0].path.count("{"), rp[0].method != "ANY"))


def is_text_content(content_type: str | None) -> bool:
    """Whether HTTP API passes a body with this content type as text (else base64)."""
    if not content_type:
        return False
    return bool(_TEXT_TYPES.match(content_type.split(";", 1)[0].strip().lower()))


def build_http_event(
    *,
    route_key: str,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    source_ip: str,
    path_parameters: Mapping[str, str],
    api_id: str = "local",
    account_id: str = LOCAL_ACCOUNT_ID,
    request_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The API Gateway HTTP API payload format 2.0 event for one request."""
    now = now or datetime.now(UTC)
    joined: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    host = joined.get("host", "localhost")
    domain = host.rsplit(":", 1)[0] if not host.startswith("[") else host
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = joined
    if raw_query:
        params: dict[str, str] = {}
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    event["requestContext"] = {
        "accountId": account_id,
        "apiId": api_id,
        "domainName": domain,
        "domainPrefix": domain.split(".", 1)[0],
        "http": {
            "method": method.upper(),
            "path": raw_path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": joined.get("user-agent", ""),
        },
        "requestId": request_id or _request_id(),
        "routeKey": route_key,
        "stage": "$default",
        "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "timeEpoch": int(now.timestamp() * 1000),
    }
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    binary = not is_text_content(joined.get("content-type"))
    if body:
        event["body"] = base64.b64encode(body).decode("ascii") if binary else body.decode("utf-8", "replace")
    event["isBase64Encoded"] = bool(body) and binary
    return event


def http_response(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body API Gateway makes of a v2.0 function answer."""
    if isinstance(result, Mapping) and "statusCode" in result:
        status = int(result["statusCode"])
        headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
        headers.extend(("Set-Cookie", str(c)) for c in result.get("cookies") or [])
        body = result.get("body")
        if body is None:
            data = b""
        elif not isinstance(body, str):
            data = json.dumps(body).encode()
        elif result.get("isBase64Encoded"):
            data = base64.b64decode(body)
        else:
            data = body.encode("utf-8")
        return status, headers, data
    return 200, [("Content-Type", "application/json")], json.dumps(result).encode()


def _request_id() -> str:
    return base64.b64encode(secrets.token_bytes(11)).decode("ascii")  # like "JKJaXmPLvHcESHA="


def _trace_id() -> str:
    return f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}"


_NOT_FOUND = (404, [("Content-Type", "application/json")], b'{"message":"Not Found"}')
_TOO_LARGE = (413, [("Content-Type", "application/json")], b'{"message":"Request Entity Too Large"}')
_SERVER_ERROR = (500, [("Content-Type", "application/json")], b'{"message":"Internal Server Error"}')


class HttpApiEmulator:
    """ThreadingHTTPServer on ``host:port`` (0: a free port) dispatching to ``function``."""

    def __init__(
        self,
        routes: Sequence[Route],
        function: LambdaFunction | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_id: str = "local",
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.routes = list(routes)
        self.function = function
        self.functions: Mapping[str, LambdaFunction] = {}  # by name, for routes that name theirs
        self.api_id = api_id
        self.max_body_bytes = max_body_bytes
        self.host = host
        emulator = self

        class Handler(_RequestHandler):
            api = emulator

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="http-api", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout)
        self._server.server_close()

    def handle(self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes, source_ip: str) -> tuple[int, list[tuple[str, str]], bytes]:
        parts = urlsplit(target)
        raw_path = parts.path or "/"
        found = find_route(self.routes, method, raw_path)
        if found is None:
            return _NOT_FOUND
        route, params = found
        request_id = _request_id()
        event = build_http_event(
            route_key=route.route_key,
            method=method,
            raw_path=raw_path,
            raw_query=parts.query,
            headers=headers,
            body=body,
            source_ip=source_ip,
            path_parameters=params,
            api_id=self.api_id,
            request_id=request_id,
        )
        function = self.functions.get(route.function) if route.function else self.function
        if function is None:
            log.error("%s: no function to invoke (handler missing)", route.route_key)
            return _SERVER_ERROR
        invocation = function.invoke(event)
        if not invocation.ok:
            status, out_headers, data = _SERVER_ERROR
        else:
            try:
                status, out_headers, data = http_response(invocation.result)
            except (TypeError, ValueError) as exc:
                log.error("%s: the function's answer is not a valid HTTP API response: %s", route.route_key, exc)
                status, out_headers, data = _SERVER_ERROR
        log.info("%s %s -> %s (%s, %.0f ms)", method, raw_path, status, function.name, invocation.duration * 1000)
        return status, [*out_headers, ("apigw-requestid", request_id)], data


class _RequestHandler(BaseHTTPRequestHandler):
    api: HttpApiEmulator
    protocol_version = "HTTP/1.1"
    server_version = "aleph-local-apigw"
    sys_version = ""

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _serve(self) -> None:
        length_header = self.headers.get("Content-Length")
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        if length_header is not None and int(length_header) > self.api.max_body_bytes:
            self._drain(int(length_header))
            self._send(*_TOO_LARGE, close=True)
            return
        if chunked:
            body = self._read_chunked()
            if body is None:
                self._send(*_TOO_LARGE, close=True)
                return
        else:
            body = self.rfile.read(int(length_header)) if length_header else b""
        headers = [(k, v) for k, v in self.headers.items()]
        headers += [
            ("x-forwarded-for", self.client_address[0]),
            ("x-forwarded-port", str(self.api.port)),
            ("x-forwarded-proto", "http"),
            ("x-amzn-trace-id", _trace_id()),
        ]
        try:
            status, out_headers, data = self.api.handle(self.command, self.path, headers, body, self.client_address[0])
        except Exception:
            log.exception("the API emulator failed on %s %s", self.command, self.path)
            status, out_headers, data = _SERVER_ERROR
        self._send(status, out_headers, data)

    def _drain(self, length: int) -> None:
        """Read (and drop) a refused body, so the client sees the answer rather than a reset."""
        left = min(length, 8 * self.api.max_body_bytes)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                return
            left -= len(chunk)

    def _read_chunked(self) -> bytes | None:
        data = bytearray()
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(data)
            if len(data) + size > self.api.max_body_bytes:
                return None
            data += self.rfile.read(size)
            self.rfile.readline()

    def _send(self, status: int, headers: Sequence[tuple[str, str]], data: bytes, *, close: bool = False) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def __getattr__(self, name: str) -> Any:
        # Any other method (TRACE, QUERY, ...) goes through routing too: no route matches it, so it
        # gets API Gateway's 404, not http.server's 501.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)
