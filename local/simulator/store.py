"""In-memory task store shared by all provider protocols.

Every accepted task is kept with what was received and everything the simulator did about it
(state, callback attempts, faults), because ``GET /_sim/tasks`` is how tests check a client's
side of the conversation.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATES = ("queued", "running", "success", "failed")


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 UTC with a ``Z``, second precision, the format of kie's createTime/completeTime."""
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_ms(moment: datetime | None) -> str | None:
    """Millisecond precision for the simulator's own records, so tests can measure delays."""
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class CallbackAttempt:
    url: str  # with any token query value masked
    status: int | None  # HTTP status the receiver answered; None when the request failed
    error: str | None
    body: dict[str, Any]
    sent_at: str
    response_excerpt: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "status": self.status,
            "error": self.error,
            "body": self.body,
            "sent_at": self.sent_at,
            "response_excerpt": self.response_excerpt,
        }


@dataclass
class Task:
    provider: str
    request: Any  # the JSON body exactly as received (parsed)
    headers: dict[str, str]  # minus Authorization
    task_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    video_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = field(default_factory=utc_now)
    state: str = "queued"
    error: dict[str, Any] | None = None  # {"code": int, "msg": str}
    result_urls: dict[str, str] | None = None  # {"video": ..., "image": ...}
    results: list[dict[str, Any]] = field(default_factory=list)  # per-result records (Runware: one per result)
    files: dict[str, Path] = field(default_factory=dict)  # served name -> path
    callbacks: list[CallbackAttempt] = field(default_factory=list)
    # none (no callBackUrl) | pending | delivered | dropped (fault) | abandoned (server stopped/cleared)
    callback_status: str = "pending"
    callback_shape: str = "A"
    faults: list[str] = field(default_factory=list)
    completed_at: datetime | None = None
    expired: bool = False
    discarded: bool = False  # removed by DELETE /_sim/tasks while in flight
    answered_at: datetime | None = None  # when the submit answer went out (late with early_callback / read_timeout)
    # What the submit was answered: accepted, "502 html", "504 html", "500 json", "connection reset", ...
    submit_answer: str | None = None
    # Set once the task will send no more callbacks (what an early_callback answer waits for).
    called_back: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "taskId": self.task_id,
            "request": self.request,
            "headers": self.headers,
            "state": self.state,
            "error": self.error,
            "result_urls": self.result_urls,
            "results": self.results,
            "callbacks": [attempt.to_json() for attempt in self.callbacks],
            "callback_status": self.callback_status,
            "callback_shape": self.callback_shape,
            "faults": self.faults,
            "expired": self.expired,
            "created_at": iso_ms(self.created_at),
            "completed_at": iso_ms(self.completed_at),
            "answered_at": iso_ms(self.answered_at),
            "submit_answer": self.submit_answer,
        }


class TaskStore:
    """Tasks by id plus a bounded log of provider requests. One lock guards both and the tasks'
    fields: callers mutate tasks only inside ``with store.lock``."""

    def __init__(self, request_log_size: int = 2000) -> None:
        self.lock = threading.RLock()
        self._tasks: dict[str, Task] = {}
        self._requests: deque[dict[str, Any]] = deque(maxlen=request_log_size)

    def add(self, task: Task) -> None:
        with self.lock:
            self._tasks[task.task_id] = task

    def add_new(self, task: Task) -> bool:
        """Add ``task`` unless its id is taken (checked and added at once); False when taken."""
        with self.lock:
            if task.task_id in self._tasks:
                return False
            self._tasks[task.task_id] = task
            return True

    def get(self, task_id: str) -> Task | None:
        with self.lock:
            return self._tasks.get(task_id)

    def to_json(self) -> list[dict[str, Any]]:
        with self.lock:
            return [task.to_json() for task in self._tasks.values()]

    def clear(self) -> list[Task]:
        """Forget every task; in-flight ones are marked discarded so they do not call back."""
        with self.lock:
            removed = list(self._tasks.values())
            self._tasks.clear()
            for task in removed:
                task.discarded = True
            return removed

    def log_request(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self._requests.append(entry)

    def requests_json(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self.lock:
            self._requests.clear()
