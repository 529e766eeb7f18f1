"""The ``/_sim/*`` control API used by tests and the demo, and the result file server.

Not part of any provider protocol: no auth (the simulator only listens on loopback).
"""

from __future__ import annotations

import json
from typing import Any

from local.simulator.context import SimContext
from local.simulator.faults import ANSWER_FAULTS, KNOWN_FAULTS, SUBMIT_FAULTS, TASK_FAULTS
from local.simulator.web import Request, Response, json_response, text_response

CONTROL_PREFIX = "/_sim"


def _error(msg: str, status: int = 400) -> Response:
    return json_response({"error": msg}, status)


def _json_body(request: Request) -> Any:
    try:
        return json.loads(request.body.decode("utf-8") or "null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed JSON: {exc}") from exc


class Control:
    def __init__(self, ctx: SimContext, providers: list[str]) -> None:
        self.ctx = ctx
        self.providers = providers

    def handle(self, request: Request) -> Response:
        """``request.path`` is the full path, starting with ``/_sim``."""
        parts = [p for p in request.path[len(CONTROL_PREFIX) :].split("/") if p]
        method = request.method
        try:
            if parts == ["health"] and method == "GET":
                return json_response({"ok": True, "providers": self.providers})
            if parts == ["tasks"]:
                return self._tasks(method)
            if len(parts) == 2 and parts[0] == "tasks" and method == "GET":
                task = self.ctx.store.get(parts[1])
                return json_response(task.to_json()) if task else _error("unknown task", 404)
            if len(parts) == 3 and parts[0] == "tasks" and parts[2] == "expire" and method == "POST":
                return self._expire(parts[1])
            if parts == ["requests"]:
                if method == "DELETE":
                    self.ctx.store.clear_requests()
                    return json_response({"ok": True})
                if method == "GET":
                    return json_response(self.ctx.store.requests_json())
            if parts == ["config"]:
                return self._config(method, request)
            if parts == ["faults"]:
                return self._faults(method, request)
            if parts == ["limits"]:
                return self._limits(method, request)
            if parts == ["reset"] and method == "POST":
                self._reset()
                return json_response({"ok": True})
            if len(parts) == 3 and parts[0] == "files" and method in ("GET", "HEAD"):
                return self._file(parts[1], parts[2])
        except ValueError as exc:
            return _error(str(exc))
        return _error(f"no control route {method} {request.path}", 404)

    def _tasks(self, method: str) -> Response:
        if method == "GET":
            return json_response(self.ctx.store.to_json())
        if method == "DELETE":
            for task in self.ctx.store.clear():
                self.ctx.remove_task_files(task.task_id)
            return json_response({"ok": True})
        return _error("use GET or DELETE", 405)

    def _expire(self, task_id: str) -> Response:
        task = self.ctx.store.get(task_id)
        if task is None:
            return _error("unknown task", 404)
        with self.ctx.store.lock:
            task.expired = True
        return json_response(task.to_json())

    def _config(self, method: str, request: Request) -> Response:
        if method == "POST":
            changes = _json_body(request)
            self.ctx.settings.update(changes)
            if isinstance(changes, dict) and "seed" in changes:
                self.ctx.faults.reseed(self.ctx.settings.seed)
        elif method != "GET":
            return _error("use GET or POST", 405)
        return json_response(self.ctx.settings.snapshot())

    def _faults(self, method: str, request: Request) -> Response:
        if method == "POST":
            body = _json_body(request)
            if isinstance(body, dict) and "rules" in body:  # {"seed": n, "rules": [...]}
                if "seed" in body:
                    self.ctx.settings.update({"seed": body["seed"]})
                    self.ctx.faults.reseed(self.ctx.settings.seed)
                body = body["rules"]
            self.ctx.faults.set_rules(body)
        elif method == "DELETE":
            self.ctx.faults.clear()
        elif method != "GET":
            return _error("use GET, POST or DELETE", 405)
        return json_response(
            {
                "rules": self.ctx.faults.to_json(),
                "seed": self.ctx.settings.seed,
                # submit: refused, no task created; answer: task created, answer spoiled; task: task created.
                "known": {"submit": list(SUBMIT_FAULTS), "answer": list(ANSWER_FAULTS), "task": list(TASK_FAULTS)},
                "all": list(KNOWN_FAULTS),
            }
        )

    def _limits(self, method: str, request: Request) -> Response:
        if method == "POST":
            self.ctx.faults.limits.set(_json_body(request))
        elif method == "DELETE":
            self.ctx.faults.limits.clear()
        elif method != "GET":
            return _error("use GET, POST or DELETE", 405)
        return json_response(self.ctx.faults.limits.to_json())

    def _reset(self) -> None:
        """Tasks, request log, faults and settings back to the start values (between tests)."""
        for task in self.ctx.store.clear():
            self.ctx.remove_task_files(task.task_id)
        self.ctx.store.clear_requests()
        self.ctx.settings.reset()
        self.ctx.faults.reseed(self.ctx.settings.seed)
        self.ctx.faults.clear()
        self.ctx.faults.limits.clear()

    def _file(self, task_id: str, name: str) -> Response:
        task = self.ctx.store.get(task_id)
        if task is None:
            return text_response("no such result\n", 404)
        with self.ctx.store.lock:
            path = task.files.get(name)
            expired = task.expired
        if expired:
            # Results are kept 14 days; after that the storage answers like a deleted object.
            return text_response("result expired\n", 404)
        if path is None or not path.is_file():
            return text_response("no such result\n", 404)
        types = {".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime", ".png": "image/png"}
        content_type = next((value for suffix, value in types.items() if name.endswith(suffix)), "application/octet-stream")
        return Response(status=200, content_type=content_type, file=path)
