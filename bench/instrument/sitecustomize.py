"""Times the handler invocations of a local stack process (used by ``bench/pipeline.py`` only).

``bench/pipeline.py`` starts the stack with this directory first on ``PYTHONPATH`` and
``BENCH_AWS_CALLS_FILE`` set. In that process only (the variable is removed at once, so moto
server, the simulator and the functions' own processes, started later, are not touched), each
handler invocation's wall time is recorded (Lambda bills wall time), by function. The times are
written to the file on SIGUSR1 and when the process exits. The handlers' AWS calls are counted
from the stack's own call log (``--record-aws-calls``), written by the functions' processes.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

_FILE = os.environ.pop("BENCH_AWS_CALLS_FILE", None)

if _FILE:
    import local.lambda_runtime

    _lock = threading.Lock()
    _invocations: dict[str, list[float]] = {}

    _invoke = local.lambda_runtime.LambdaFunction.invoke

    def _timed_invoke(self: Any, event: Any) -> Any:
        started = time.monotonic()
        try:
            return _invoke(self, event)
        finally:
            with _lock:
                _invocations.setdefault(self.name, []).append(time.monotonic() - started)

    local.lambda_runtime.LambdaFunction.invoke = _timed_invoke  # type: ignore[method-assign]

    def _write() -> None:
        with _lock:
            data = {"invocations": {name: list(times) for name, times in _invocations.items()}}
        tmp = Path(f"{_FILE}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(_FILE)

    atexit.register(_write)
    # SIGUSR1 writes the counts so far (the benchmark reads them between its phases).
    import signal

    signal.signal(signal.SIGUSR1, lambda signum, frame: _write())
