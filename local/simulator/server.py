"""HTTP plumbing: routes ``/<provider>/...`` to the protocol modules and ``/_sim/...`` to control.

``SimulatorServer`` runs in-process (tests) or from ``python -m local.simulator``. Adding a
provider means writing a module with a ``Provider`` (see ``web.py``) and listing it in
``_build_providers``; nothing here knows any protocol.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from local.simulator.config import ProviderKey, Settings
from local.simulator.context import SimContext
from local.simulator.control import CONTROL_PREFIX, Control
from local.simulator.crun import CrunProtocol
from local.simulator.kie import KieProtocol
from local.simulator.replicate import ReplicateProtocol
from local.simulator.runware import RunwareProtocol
from local.simulator.runway import RunwayProtocol
from local.simulator.store import iso_ms, utc_now
from local.simulator.web import Provider, Request, Response, json_response

log = logging.getLogger("local.simulator")

MAX_REQUEST_BYTES = 2 * 1024 * 1024  # API bodies are small JSON documents
MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # a file POSTed to an upload target (Runway's upload API: 200 MB)
FILE_CHUNK = 256 * 1024


def _build_providers(ctx: SimContext) -> list[Provider]:
    return [
        KieProtocol("kie", ctx, signs_callbacks=True),
        KieProtocol("apikley", ctx),
        RunwareProtocol(ctx),
        CrunProtocol(ctx),
        ReplicateProtocol(ctx),
        RunwayProtocol(ctx),
    ]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # HTTP/1.0: one request per connection keeps the plumbing simple and robust.
    protocol_version = "HTTP/1.0"
    server_version = "AlephProviderSimulator/1.0"

    def do_GET(self) -> None:  # stdlib naming
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        log.info("%s %s", self.address_string(), format % args)

    def _read_body(self) -> bytes | None:
        """The request body, de-chunked; None when it is over the size limit."""
        multipart = (self.headers.get("Content-Type") or "").lower().startswith("multipart/form-data")
        limit = MAX_UPLOAD_BYTES if multipart else MAX_REQUEST_BYTES
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
                if len(body) > limit:
                    return None
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path = split.path or "/"
        try:
            body = self._read_body()
        except ValueError:
            self._send(json_response({"code": 400, "msg": "Bad chunked body", "data": None}, 400))
            return
        if body is None:
            self._send(json_response({"code": 413, "msg": "Request body too large", "data": None}, 413))
            return
        headers = dict(self.headers.items())
        query = parse_qs(split.query, keep_blank_values=True)
        method = "GET" if self.command == "HEAD" else self.command

        provider = self.server.find_provider(path)
        try:
            if path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/"):
                response = self.server.control.handle(Request(method, path, query, headers, body))
            elif provider is not None:
                subpath = path[len(provider.prefix) :] or "/"
                response = provider.handle(Request(method, subpath, query, headers, body))
                self.server.log_provider_request(provider.name, self.command, self.path, response)
            else:
                response = json_response({"code": 404, "msg": f"Not Found: {path}", "data": None}, 404)
        except Exception:  # answer 500 rather than drop the connection
            log.exception("error handling %s %s", self.command, self.path)
            response = json_response({"code": 500, "msg": "Simulator internal error", "data": None}, 500)
        self._send(response)

    def _send(self, response: Response) -> None:
        if response.reset:
            self._reset_connection()
            return
        try:
            length = response.file.stat().st_size if response.file is not None else len(response.body)
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(length))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command == "HEAD":
                return
            if response.file is not None:
                with response.file.open("rb") as source:
                    while chunk := source.read(FILE_CHUNK):
                        self.wfile.write(chunk)
            else:
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            log.info("client went away during %s %s", self.command, self.path)

    def _reset_connection(self) -> None:
        """Close the connection with a TCP reset (SO_LINGER 0) and no HTTP answer, the way a
        crashed server or a dropped load-balancer connection looks to the client."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # the socket only really closes once its file objects are closed
            self.connection.close()
        except OSError:
            log.info("connection already gone during %s %s", self.command, self.path)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], ctx: SimContext) -> None:
        super().__init__(address, _Handler)
        self.ctx = ctx
        self.providers = _build_providers(ctx)
        self.control = Control(ctx, [p.name for p in self.providers])

    def find_provider(self, path: str) -> Provider | None:
        for provider in self.providers:
            if path == provider.prefix or path.startswith(provider.prefix + "/"):
                return provider
        return None

    def log_provider_request(self, provider: str, method: str, target: str, response: Response) -> None:
        """Every provider call, accepted or not, so tests can count e.g. submit retries."""
        code: Any = None
        if response.content_type == "application/json" and response.body:
            try:
                answer = json.loads(response.body)
                code = answer.get("code")
                errors = answer.get("errors")
                if code is None and isinstance(errors, list) and errors and isinstance(errors[0], dict):
                    code = errors[0].get("code")  # Runware's errors envelope
            except (ValueError, AttributeError):
                code = None
        self.ctx.store.log_request(
            {
                "provider": provider,
                "method": method,
                "path": target,
                "http_status": None if response.reset else response.status,
                "code": code,
                "reset": response.reset,
                "at": iso_ms(utc_now()),
            }
        )


class SimulatorServer:
    """The provider simulator, startable in-process: ``start()`` returns once it listens."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        public_url: str | None = None,
        keys: dict[str, ProviderKey] | None = None,
        callback_shape: str = "A",
        seed: int | None = None,
        workers: int = 2,
    ) -> None:
        self.host = host
        self.port = port
        self._settings = Settings(keys=keys, callback_shape=callback_shape, public_url=public_url, seed=seed)
        self._workers = workers
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.ctx: SimContext | None = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("simulator not started")
        host, port = self._httpd.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else str(host)
        return f"http://{shown}:{port}"

    def start(self) -> SimulatorServer:
        if self._httpd is not None:
            return self
        self._tmp = tempfile.TemporaryDirectory(prefix="aleph-sim-")
        self.ctx = SimContext(self._settings, Path(self._tmp.name), workers=self._workers)
        self._httpd = _Server((self.host, self.port), self.ctx)
        self.ctx.own_url = self.url
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="sim-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        if self.ctx is not None:
            self.ctx.stop.set()
            self.ctx.settings.wake_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        if self.ctx is not None:
            self.ctx.shutdown()
        if self._tmp is not None:
            self._tmp.cleanup()
        self._httpd = None
        self._thread = None
        self._tmp = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
