"""Counts what the handlers ask of AWS in a local stack process (used by ``bench/pipeline.py`` only).

``bench/pipeline.py`` starts the stack with this directory first on ``PYTHONPATH`` and
``BENCH_AWS_CALLS_FILE`` set. In that process only (the variable is removed at once, so moto
server and the simulator, started later, are not touched), every botocore API call is counted
by service and operation, except those of clients made by ``local.client.aws_client``: that is
the dispatcher standing in for the event sources (SQS polling, stream reading), which AWS runs
for us. Each handler invocation's wall time is recorded too (Lambda bills wall time). The counts
are written to the file on SIGUSR1 and when the process exits.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

_FILE = os.environ.pop("BENCH_AWS_CALLS_FILE", None)

if _FILE:
    import botocore.client

    import local.client
    import local.lambda_runtime

    _lock = threading.Lock()
    _calls: Counter[str] = Counter()
    _invocations: dict[str, list[float]] = {}

    _make_api_call = botocore.client.BaseClient._make_api_call

    def _counting_call(self: Any, operation_name: str, api_params: Any) -> Any:
        if not getattr(self, "_bench_event_source", False):
            with _lock:
                _calls[f"{self.meta.service_model.service_name}.{operation_name}"] += 1
        return _make_api_call(self, operation_name, api_params)

    botocore.client.BaseClient._make_api_call = _counting_call  # type: ignore[method-assign]

    _aws_client = local.client.aws_client

    def _marked_client(*args: Any, **kwargs: Any) -> Any:
        client = _aws_client(*args, **kwargs)
        client._bench_event_source = True
        return client

    local.client.aws_client = _marked_client  # type: ignore[assignment]

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
            data = {"calls": dict(_calls), "invocations": {name: list(times) for name, times in _invocations.items()}}
        tmp = Path(f"{_FILE}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(_FILE)

    atexit.register(_write)
    # SIGUSR1 writes the counts so far (the benchmark reads them between its phases).
    import signal

    signal.signal(signal.SIGUSR1, lambda signum, frame: _write())
