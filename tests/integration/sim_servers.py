"""Small local HTTP servers the simulator tests share: files to fetch, and a callback receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WAIT_SECONDS = 30.0


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        pass


@dataclass
class CallbackSink:
    """Receives callbacks; remembers path, headers and JSON body of each POST."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def clear(self) -> None:
        with self.cond:
            self.received.clear()

    def for_task(self, task_id: str) -> list[dict[str, Any]]:
        with self.cond:
            return [c for c in self.received if task_id in json.dumps(c["body"])]

    def bodies(self, task_id: str) -> list[Any]:
        return [entry["body"] for entry in self.for_task(task_id)]

    def wait_for(self, task_id: str, count: int = 1) -> list[dict[str, Any]]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.for_task(task_id)) >= count, timeout=WAIT_SECONDS)
        assert ok, f"expected {count} callback(s) for {task_id}, got {self.for_task(task_id)}"
        return self.for_task(task_id)


def sink_handler(sink: CallbackSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            with sink.cond:
                sink.received.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                sink.cond.notify_all()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def serve(server: ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
