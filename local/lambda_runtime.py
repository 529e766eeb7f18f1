"""Run a handler module the way the Lambda Python runtime does, in this process.

Each function is loaded from its file (``functions/<name>/app.py`` by default) under a unique
module name. Lambda runs concurrent invocations in separate sandboxes, each with its own copy of
the module's globals; so does this: up to ``max_concurrency`` copies are loaded on demand (the
first at start, like a cold start) and each copy serves one invocation at a time. Events and
answers go through JSON like Lambda's, and the context object has the runtime's attributes.

An invocation cut off by the ``kill`` fault of ``local.aws_faults`` fails like a Lambda timeout
(``Task timed out``), and its sandbox is discarded: the next invocation loads a fresh copy of
the handler module, like a new Lambda sandbox. (The domain package is imported once per
process and shared by every sandbox, as before.)
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import logging
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from local import aws_faults

LOCAL_ACCOUNT_ID = "123456789012"  # moto's default account

log = logging.getLogger("local.lambda")

_LOAD_LOCK = threading.Lock()
_MODULE_NUMBERS = itertools.count(1)


class LambdaContext:
    """The attributes and method of the Python runtime's context object (awslambdaric)."""

    def __init__(
        self,
        *,
        function_name: str,
        memory_limit_in_mb: int,
        timeout_seconds: float,
        region: str,
        account_id: str = LOCAL_ACCOUNT_ID,
        aws_request_id: str | None = None,
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        # The runtime reads it from AWS_LAMBDA_FUNCTION_MEMORY_SIZE: a string, not an int.
        self.memory_limit_in_mb = str(memory_limit_in_mb)
        self.aws_request_id = aws_request_id or str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        day = datetime.now(UTC).strftime("%Y/%m/%d")
        self.log_stream_name = f"{day}/[$LATEST]{uuid.uuid4().hex}"
        self.identity = None
        self.client_context = None
        self.tenant_id = None
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class Invocation:
    """The outcome of one invocation: ``result`` when ``ok``, else ``error`` (type: message)."""

    request_id: str
    ok: bool
    result: Any = None
    error: str | None = None
    duration: float = 0.0


class HandlerInitError(RuntimeError):
    """The handler module could not be loaded (Lambda's Runtime.ImportModuleError / init error)."""


@dataclass
class _Sandbox:
    module: ModuleType
    handler: Callable[[Any, Any], Any]


class LambdaFunction:
    """One function: its handler file, run in up to ``max_concurrency`` warm sandboxes."""

    def __init__(
        self,
        name: str,
        handler_file: Path,
        *,
        handler_attr: str = "lambda_handler",
        function_name: str | None = None,
        timeout_seconds: float = 60.0,
        memory_mb: int = 512,
        max_concurrency: int = 4,
        region: str = "us-east-1",
        account_id: str = LOCAL_ACCOUNT_ID,
    ) -> None:
        self.name = name
        self.handler_file = Path(handler_file)
        self.handler_attr = handler_attr
        self.function_name = function_name or f"aleph-{name}"
        self.timeout_seconds = timeout_seconds
        self.memory_mb = memory_mb
        self.max_concurrency = max(1, max_concurrency)
        self.region = region
        self.account_id = account_id
        self._cond = threading.Condition()
        self._idle: list[_Sandbox] = []
        self._created = 0

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"

    def exists(self) -> bool:
        return self.handler_file.is_file()

    def warm(self) -> bool:
        """Load one sandbox now (the cold start); log and return False if the module fails."""
        try:
            sandbox = self._acquire()
        except HandlerInitError:
            return False
        self._release(sandbox)
        return True

    def invoke(self, event: Any) -> Invocation:
        """Invoke the handler with a JSON copy of ``event``; never raises."""
        request_id = str(uuid.uuid4())
        started = time.monotonic()
        try:
            sandbox = self._acquire()
        except HandlerInitError as exc:
            return Invocation(request_id, ok=False, error=f"Runtime.ImportModuleError: {exc}")
        keep_sandbox = True
        try:
            payload = json.loads(json.dumps(event))
            context = LambdaContext(
                function_name=self.function_name,
                memory_limit_in_mb=self.memory_mb,
                timeout_seconds=self.timeout_seconds,
                region=self.region,
                account_id=self.account_id,
                aws_request_id=request_id,
            )
            with aws_faults.invocation(self.name):
                result = sandbox.handler(payload, context)
            try:
                result = json.loads(json.dumps(result))
            except (TypeError, ValueError) as exc:
                log.error("%s: the answer is not JSON serializable (Runtime.MarshalError): %s", self.name, exc)
                return Invocation(request_id, ok=False, error=f"Runtime.MarshalError: {exc}", duration=time.monotonic() - started)
        except aws_faults.InvocationKilled as exc:
            # Lambda reports a cut-off invocation as a timeout, and never reuses its sandbox.
            keep_sandbox = False
            duration = time.monotonic() - started
            log.error("%s: request %s was cut off (%s): reported as timed out, sandbox discarded", self.name, request_id, exc)
            return Invocation(request_id, ok=False, error=f"Task timed out after {self.timeout_seconds:.2f} seconds ({exc})", duration=duration)
        except (Exception, SystemExit) as exc:  # a handler's failure is reported, never fatal
            log.error(
                "%s handler raised (request %s):\n%s",
                self.name,
                request_id,
                "".join(traceback.format_exception(exc)).rstrip(),
            )
            return Invocation(request_id, ok=False, error=f"{type(exc).__name__}: {exc}", duration=time.monotonic() - started)
        finally:
            if keep_sandbox:
                self._release(sandbox)
            else:
                self._discard(sandbox)
        duration = time.monotonic() - started
        if duration > self.timeout_seconds:
            log.error(
                "%s: request %s took %.1f s, over the function's %s s timeout: AWS would have failed it",
                self.name,
                request_id,
                duration,
                self.timeout_seconds,
            )
            return Invocation(request_id, ok=False, error="Task timed out", duration=duration)
        return Invocation(request_id, ok=True, result=result, duration=duration)

    # ------------------------------------------------------------------------- sandboxes

    def _acquire(self) -> _Sandbox:
        with self._cond:
            while not self._idle and self._created >= self.max_concurrency:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._created += 1
        try:
            return self._load()
        except BaseException:
            with self._cond:
                self._created -= 1
                self._cond.notify()
            raise

    def _release(self, sandbox: _Sandbox) -> None:
        with self._cond:
            self._idle.append(sandbox)
            self._cond.notify()

    def _discard(self, sandbox: _Sandbox) -> None:
        """Drop a broken sandbox; the next invocation that needs one loads a fresh copy."""
        sys.modules.pop(sandbox.module.__name__, None)
        with self._cond:
            self._created -= 1
            self._cond.notify()

    def _load(self) -> _Sandbox:
        path = self.handler_file.resolve()
        if not path.is_file():
            log.error("%s: handler file %s does not exist", self.name, path)
            raise HandlerInitError(f"no handler file {path}")
        with _LOAD_LOCK:
            module_name = f"_aleph_local_{self.name}_{next(_MODULE_NUMBERS)}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise HandlerInitError(f"cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            # Like the function's code directory on Lambda: siblings of app.py are importable.
            sys.path.insert(0, str(path.parent))
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException as exc:
                sys.modules.pop(module_name, None)
                log.error(
                    "%s: loading %s failed (init error):\n%s",
                    self.name,
                    path,
                    "".join(traceback.format_exception(exc)).rstrip(),
                )
                raise HandlerInitError(f"{type(exc).__name__}: {exc}") from exc
            finally:
                with contextlib.suppress(ValueError):
                    sys.path.remove(str(path.parent))
        handler = getattr(module, self.handler_attr, None)
        if not callable(handler):
            log.error("%s: %s has no callable %s", self.name, path, self.handler_attr)
            raise HandlerInitError(f"{path} has no handler {self.handler_attr}")
        return _Sandbox(module=module, handler=handler)
