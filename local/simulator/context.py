"""What every provider protocol shares: settings, tasks, faults, workers and result files."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

from local.simulator.config import Settings
from local.simulator.faults import FaultBook
from local.simulator.store import TaskStore

log = logging.getLogger("local.simulator")


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
