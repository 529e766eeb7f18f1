"""What every provider protocol shares: settings, tasks, faults, workers and result files."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from local.simulator.callbacks import post_json
from local.simulator.config import Settings
from local.simulator.editor import MSG_SERVER_ERROR, EditFailure, edit_video, fetch_input
from local.simulator.faults import DEFAULT_GENERATION_FAILURE_MSG, FaultBook, FaultRule
from local.simulator.store import Task, TaskStore, utc_now
from local.simulator.web import Response, connection_reset, gateway_response

log = logging.getLogger("local.simulator")

# The files an edited task serves.
VIDEO_FILE = "video.mp4"
COVER_FILE = "cover.png"

# How long an early_callback answer waits for the task's callbacks at most.
EARLY_CALLBACK_MAX_WAIT_SECONDS = 120.0


class SimContext:
    """Shared services. Edits run on a small bounded pool (ffmpeg is CPU-heavy); callbacks run on
    their own threads so a delayed or slow callback never blocks the next edit."""

    def __init__(self, settings: Settings, files_root: Path, workers: int = 2) -> None:
        self.settings = settings
        self.store = TaskStore()
        self.faults = FaultBook(settings.seed)
        self.files_root = files_root
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sim-edit")
        self.own_url = ""  # set by the server once it is bound
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()

    def public_url(self) -> str:
        return self.settings.public_url or self.own_url

    def file_url(self, task_id: str, name: str) -> str:
        return f"{self.public_url()}/_sim/files/{quote(task_id)}/{quote(name)}"

    def task_dir(self, task_id: str) -> Path:
        path = self.files_root / task_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remove_task_files(self, task_id: str) -> None:
        shutil.rmtree(self.files_root / task_id, ignore_errors=True)

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a job on the edit pool; its exceptions are logged, not lost."""

        def run() -> None:
            try:
                job()
            except Exception:  # a worker must never die silently
                log.exception("simulator worker failed")

        self.pool.submit(run)

    def spawn(self, job: Callable[[], None], name: str) -> None:
        """Run ``job`` on its own daemon thread, tracked so ``stop`` can wait for it briefly."""

        def run() -> None:
            try:
                job()
            except Exception:
                log.exception("simulator background job failed")

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._threads_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def start_task(self, task: Task, rules: dict[str, FaultRule], run: Callable[[], None]) -> None:
        """Run an accepted task: on the edit pool, or at once on its own thread when its callback
        must outrun the submit answer (``early_callback``: a queue wait would hold the answer)."""
        if "early_callback" in rules:
            self.spawn(run, name=f"sim-early-{task.task_id[:8]}")
        else:
            self.submit(run)

    def begin(self, task: Task) -> bool:
        """A worker's start on a task: mark it running and wait while ``hold`` is on (so a test can
        observe it running). False when the task was discarded or the server stops: skip it."""
        with self.store.lock:
            go = not (task.discarded or self.stop.is_set())
            if go:
                task.state = "running"
        if go:
            self.settings.wait_released(self.stop)
            go = not (task.discarded or self.stop.is_set())
        if not go:
            task.called_back.set()
        return go

    def before_answer(self, task: Task, rules: dict[str, FaultRule]) -> None:
        """The faults that hold back an accepted task's submit answer, applied by every protocol:
        ``early_callback`` waits until the task has called back, ``read_timeout`` withholds the
        answer past the client's read timeout (the task exists and runs all the same)."""
        if "early_callback" in rules:
            deadline = time.monotonic() + EARLY_CALLBACK_MAX_WAIT_SECONDS
            while not task.called_back.wait(0.1) and not self.stop.is_set() and time.monotonic() < deadline:
                pass
        if "read_timeout" in rules:
            hold = rules["read_timeout"].delay_seconds
            self.sleep(self.settings.submit_hold_seconds if hold is None else hold)
        with self.store.lock:
            task.answered_at = utc_now()

    def spoiled_answer(self, task: Task, rules: dict[str, FaultRule], server_error: Callable[[], Response]) -> Response | None:
        """The answer that replaces an accepted task's acknowledgement, or None to acknowledge it:
        ``reset_after_read`` resets the connection, ``submit_5xx_after_create`` answers a gateway
        page (502/504) or ``server_error()`` (the provider's own 500). The task exists either way.
        Records on the task what its submit was answered."""
        answer: Response | None = None
        if "reset_after_read" in rules:
            answer, shown = connection_reset(), "connection reset"
        elif "submit_5xx_after_create" in rules:
            status = rules["submit_5xx_after_create"].http_status or 500
            answer = gateway_response(status) if status != 500 else server_error()
            shown = f"{answer.status} {'html' if answer.content_type == 'text/html' else 'json'}"
        else:
            shown = "accepted after the client's read timeout" if "read_timeout" in rules else "accepted"
        with self.store.lock:
            task.submit_answer = shown
        return answer

    def finish_callbacks(self, task: Task, status: str) -> None:
        """The task sends no more callbacks: record why (``sent``, ``dropped``, ...) and release
        an answer waiting for them. Caller may hold the store lock (it is re-entrant)."""
        with self.store.lock:
            task.callback_status = status
        task.called_back.set()

    def edit_task(self, task: Task, rules: dict[str, FaultRule], video_url: str, *, aspect_ratio: str | None, failure_code: int) -> dict[str, Any] | None:
        """Fetch and edit a task's video into ``VIDEO_FILE`` and ``COVER_FILE`` in its folder.

        None on success, else the failure as ``{"code", "msg"}`` (``failure_code`` for the
        ``generation_failure`` fault; 500 for anything unexpected)."""
        try:
            if "generation_failure" in rules:
                raise EditFailure(failure_code, rules["generation_failure"].msg or DEFAULT_GENERATION_FAILURE_MSG)
            workdir = self.task_dir(task.task_id)
            source = workdir / "input"
            try:
                fetch_input(video_url, source)
                edit_video(source, workdir / VIDEO_FILE, workdir / COVER_FILE, aspect_ratio=aspect_ratio, wrong_container="wrong_container" in rules)
            finally:
                source.unlink(missing_ok=True)
        except EditFailure as failure:
            return {"code": failure.code, "msg": failure.msg}
        except Exception:  # any surprise is a provider-side 500 for the client
            log.exception("task %s failed unexpectedly", task.task_id)
            return {"code": 500, "msg": MSG_SERVER_ERROR}
        return None

    def result_files(self, task: Task, names: tuple[str, ...]) -> dict[str, Path]:
        return {name: self.task_dir(task.task_id) / name for name in names}

    def record_outcome(self, task: Task, rules: dict[str, FaultRule], error: dict[str, Any] | None, files: dict[str, Path], urls: dict[str, str]) -> None:
        """Record how a task ended: its result files and their URLs (``urls`` maps a result's
        name in the protocol to a file name), or its error."""
        with self.store.lock:
            task.completed_at = utc_now()
            if error is None:
                task.files = dict(files)
                task.result_urls = {name: self.file_url(task.task_id, file_name) for name, file_name in urls.items()}
                task.expired = "expired_result" in rules
                task.state = "success"
            else:
                task.error = error
                task.state = "failed"
            discarded = task.discarded
        if discarded:  # DELETE /_sim/tasks raced with this task: leave nothing behind
            self.remove_task_files(task.task_id)

    # ---- callbacks, the same for every protocol ---------------------------------------------

    def start_callbacks(self, task: Task, rules: dict[str, FaultRule], url: object, deliver: Callable[[str], None]) -> None:
        """Hand ``deliver`` to a thread of its own, unless no callback is due (no URL, discarded, dropped)."""
        with self.store.lock:
            status = self.undeliverable(task, rules, url)
            if status is not None:
                self.finish_callbacks(task, status)
                return
        self.spawn(lambda: deliver(str(url)), name=f"sim-callback-{task.task_id[:13]}")

    @staticmethod
    def undeliverable(task: Task, rules: dict[str, FaultRule], url: object) -> str | None:
        """Why no callback will go out (``none``, ``abandoned``, ``dropped``), or None to send it."""
        if not url:
            return "none"
        if task.discarded:
            return "abandoned"
        return "dropped" if "drop_callback" in rules else None

    def wait_callback_delay(self, rules: dict[str, FaultRule]) -> bool:
        """The ``delay_callback`` fault; False when the simulator stopped during the wait."""
        if "delay_callback" not in rules:
            return True
        rule_delay = rules["delay_callback"].delay_seconds
        return self.sleep(self.settings.delay_seconds if rule_delay is None else rule_delay)

    def post_callbacks(
        self,
        task: Task,
        url: str,
        payloads: list[dict[str, Any]],
        *,
        headers: dict[str, str] | None = None,
        attempts: int = 1,
        retry_seconds: float = 0.0,
    ) -> None:
        """POST each payload, recording every attempt on the task; a non-2xx answer is retried
        up to ``attempts`` times (for providers that document retries)."""
        for body in payloads:
            for _attempt in range(attempts):
                if self.stop.is_set():
                    return
                attempt = post_json(url, body, timeout=self.settings.callback_timeout_seconds, headers=headers)
                with self.store.lock:
                    task.callbacks.append(attempt)
                if attempt.status is not None and 200 <= attempt.status < 300:
                    break
                if attempts > 1:
                    self.sleep(retry_seconds)

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the server stops first; True when the full wait elapsed."""
        return not self.stop.wait(seconds) if seconds > 0 else not self.stop.is_set()

    def shutdown(self, timeout: float = 5.0) -> None:
        self.stop.set()
        self.settings.wake_all()  # releases workers blocked by ``hold``
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)
