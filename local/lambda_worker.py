"""One sandbox of a function in the local stack: a process running its handler, one invocation at a time.

``local.lambda_runtime.LambdaFunction`` starts this module in a process of its own for each
sandbox of a function (one per concurrent invocation, like Lambda's execution environments),
with the function's environment and nothing else of the stack's, and talks to it over a socket
(the ``multiprocessing.connection`` framing): the configuration first, then ``warm`` and
``invoke`` requests, each answered with its ``id`` and the process's counts; ``stop`` ends it.

The handler module is loaded on the first request (the cold start) and kept. Everything in the
process (the handler module, the domain package, every library's globals, e.g. Powertools'
``BaseRouter.current_event``) belongs to this one sandbox and sees one invocation at a time,
as on Lambda. An invocation cut off by the ``kill`` fault fails like a Lambda timeout, and so
does one that returns after its timeout or whose module fails to load: the answer says
``retire`` and the process ends (Lambda never reuses such a sandbox; the next invocation gets a
fresh process).

What the worker watches for the stack, all of it handler code (everything in this process is):

- AWS faults: ``local.aws_faults`` is installed for this function with the stack's rules and
  a random generator seeded from the seed, the function's name and the sandbox's number.
- Environment reads: every ``Settings`` field of the domain read while its variable is absent
  from this process's environment (the product default was used). A *wiring* field (a resource
  name, a URL: ``json_schema_extra={"wiring": True}`` in ``aleph_pipeline.config``) read so is a
  variable the template does not give this function; with ``strict_env`` the read raises.
- AWS calls (``record_aws_calls``): one JSON line per botocore API call, presigned URLs
  included, with only the parameters that name a resource.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import importlib.util
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from local import aws_faults
from local.lambda_runtime import HandlerInitError, LambdaContext, WorkerConfig

log = logging.getLogger("local.lambda")

# The parameters of an AWS call that say which resource it touches (the IAM audit's input).
IDENTIFYING_PARAMS = ("Bucket", "Key", "Prefix", "CopySource", "TableName", "IndexName", "QueueUrl", "SecretId", "EventBusName", "TopicArn")


class UndefinedVariableError(BaseException):
    """A handler read a wiring setting its function's environment does not define (strict mode).

    A BaseException, so the handler's own ``except Exception`` cannot hide it.
    """


# ---------------------------------------------------------------------------- sandbox


class Sandbox:
    """The handler module of this process, loaded on first use (the cold start)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._handler: Callable[[Any, Any], Any] | None = None

    def handler(self) -> Callable[[Any, Any], Any]:
        if self._handler is None:
            self._handler = self._load()
        return self._handler

    def _load(self) -> Callable[[Any, Any], Any]:
        name, path = self.config.name, Path(self.config.handler_file).resolve()
        if not path.is_file():
            log.error("%s: handler file %s does not exist", name, path)
            raise HandlerInitError(f"no handler file {path}")
        # Lambda imports the handler as a top-level module named after its file (app.lambda_handler).
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise HandlerInitError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(path.stem, None)
            log.error("%s: loading %s failed (init error):\n%s", name, path, "".join(traceback.format_exception(exc)).rstrip())
            raise HandlerInitError(f"{type(exc).__name__}: {exc}") from exc
        handler = getattr(module, self.config.handler_attr, None)
        if not callable(handler):
            log.error("%s: %s has no callable %s", name, path, self.config.handler_attr)
            raise HandlerInitError(f"{path} has no handler {self.config.handler_attr}")
        return handler  # type: ignore[no-any-return]


def invoke(sandbox: Sandbox, request_id: str, event_json: str) -> tuple[dict[str, Any], bool]:
    """Run one invocation: the outcome as ``Invocation``'s fields (``result`` as JSON text), and
    whether the sandbox is done for (killed, timed out, or its module failed to load)."""
    config = sandbox.config
    started = time.monotonic()

    def outcome(ok: bool, *, result: str | None = None, error: str | None = None) -> dict[str, Any]:
        return {"request_id": request_id, "ok": ok, "result_json": result, "error": error, "duration": time.monotonic() - started}

    try:
        handler = sandbox.handler()
    except HandlerInitError as exc:
        return outcome(False, error=f"Runtime.ImportModuleError: {exc}"), True
    try:
        context = LambdaContext(
            function_name=config.function_name,
            memory_limit_in_mb=config.memory_mb,
            timeout_seconds=config.timeout_seconds,
            region=config.region,
            account_id=config.account_id,
            aws_request_id=request_id,
        )
        with aws_faults.invocation(config.name):
            result = handler(json.loads(event_json), context)
        try:
            result_json = json.dumps(result)
        except (TypeError, ValueError) as exc:
            log.error("%s: the answer is not JSON serializable (Runtime.MarshalError): %s", config.name, exc)
            return outcome(False, error=f"Runtime.MarshalError: {exc}"), False
    except aws_faults.InvocationKilled as exc:
        # Lambda reports a cut-off invocation as a timeout, and never reuses its sandbox.
        log.error("%s: request %s was cut off (%s): reported as timed out, sandbox %d ended", config.name, request_id, exc, config.sandbox)
        return outcome(False, error=f"Task timed out after {config.timeout_seconds:.2f} seconds ({exc})"), True
    except UndefinedVariableError as exc:
        log.error("%s: request %s failed: %s", config.name, request_id, exc)
        return outcome(False, error=f"Runtime.UndefinedVariable: {exc}"), False
    except (Exception, SystemExit) as exc:  # a handler's failure is reported, never fatal
        log.error("%s handler raised (request %s):\n%s", config.name, request_id, "".join(traceback.format_exception(exc)).rstrip())
        return outcome(False, error=f"{type(exc).__name__}: {exc}"), False
    duration = time.monotonic() - started
    if duration > config.timeout_seconds:
        log.error(
            "%s: request %s took %.1f s, over the function's %s s timeout: AWS would have failed it and ended sandbox %d",
            config.name,
            request_id,
            duration,
            config.timeout_seconds,
            config.sandbox,
        )
        return outcome(False, error=f"Task timed out after {config.timeout_seconds:.2f} seconds"), True
    return outcome(True, result=result_json), False


# -------------------------------------------------------------------- environment reads


class EnvironmentWatch:
    """Records the ``Settings`` fields read with their product default (variable absent)."""

    def __init__(self, function: str, *, strict: bool) -> None:
        self.function = function
        self.strict = strict
        self._lock = threading.Lock()
        self._reads: dict[str, dict[str, Any]] = {}

    def reads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(read) for read in self._reads.values()]

    def install(self) -> bool:
        """Watch ``aleph_pipeline.config.Settings`` (False when this function has no domain layer)."""
        try:
            from aleph_pipeline.config import Settings
        except ImportError:
            return False
        fields = Settings.model_fields
        wiring = {name for name, info in fields.items() if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("wiring")}
        original = Settings.__getattribute__
        watch = self

        def getattribute(self: Any, name: str) -> Any:
            value = original(self, name)
            if name in fields and name not in original(self, "__pydantic_fields_set__"):
                watch.defaulted(name, wiring=name in wiring)
            return value

        Settings.__getattribute__ = getattribute  # type: ignore[method-assign]
        return True

    def defaulted(self, field: str, *, wiring: bool) -> None:
        variable = field.upper()  # config.environment_values: the field's name, any case, no prefix
        with self._lock:
            first = field not in self._reads
            self._reads.setdefault(field, {"variable": variable, "field": field, "wiring": wiring})
        if wiring and first:
            log.warning("%s reads %s, which its environment does not define (the default was used)", self.function, variable)
        if wiring and self.strict:
            raise UndefinedVariableError(f"{self.function} reads {variable} (Settings.{field}), which its template entry does not define")


# --------------------------------------------------------------------------- AWS calls


def _identifying(params: Mapping[str, Any]) -> dict[str, Any]:
    out = {name: params[name] for name in IDENTIFYING_PARAMS if name in params}
    copy_source = out.get("CopySource")
    if isinstance(copy_source, Mapping):
        out["CopySource"] = {k: copy_source[k] for k in ("Bucket", "Key") if k in copy_source}
    entries = params.get("Entries")
    if isinstance(entries, list):
        buses = [entry.get("EventBusName") for entry in entries if isinstance(entry, Mapping)]
        out["Entries"] = [{"EventBusName": bus} for bus in buses]
    return out


class CallRecorder:
    """Appends one JSON line per botocore API call (and presigned URL) to a file."""

    def __init__(self, function: str, path: Path) -> None:
        self.function = function
        # O_APPEND: each line is one write(), so the workers' lines never interleave.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def install(self) -> None:
        import botocore.session

        create_client = botocore.session.Session.create_client
        recorder = self

        @functools.wraps(create_client)
        def create_client_recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
            client = create_client(self, *args, **kwargs)
            client.meta.events.register("before-parameter-build", recorder.record, unique_id="aleph-record-aws-calls")
            return client

        botocore.session.Session.create_client = create_client_recorded

    def record(self, params: Mapping[str, Any], model: Any, context: Mapping[str, Any] | None = None, **_: Any) -> None:
        line = {
            "function": self.function,
            "service": model.service_model.service_name,
            "operation": model.name,
            "params": _identifying(params),
            "presigned": bool((context or {}).get("is_presign_request")),
        }
        os.write(self._fd, (json.dumps(line, default=str) + "\n").encode())


# ------------------------------------------------------------------------------ serving


class Worker:
    """The requests of one connection: invocations one at a time, in a thread of their own so
    that ``stop`` is read even while one runs."""

    def __init__(self, connection: Connection, config: WorkerConfig) -> None:
        self.connection = connection
        self.config = config
        self.sandbox = Sandbox(config)
        self.watch = EnvironmentWatch(config.name, strict=config.strict_env)
        self.injector: aws_faults.FaultInjector | None = None
        self._send_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{config.name}-{config.sandbox}")

    def setup(self) -> None:
        if self.config.aws_faults is not None:
            fault_config = aws_faults.parse_config(self.config.aws_faults)
            self.injector = aws_faults.FaultInjector(fault_config, function=self.config.name, sandbox=self.config.sandbox).install()
        if self.config.record_aws_calls:
            CallRecorder(self.config.name, Path(self.config.record_aws_calls)).install()
        self.watch.install()

    def stats(self) -> dict[str, Any]:
        faults = self.injector.report() if self.injector is not None else None
        return {"faults": faults, "env_reads": self.watch.reads()}

    def send(self, message: Mapping[str, Any]) -> None:
        with self._send_lock:
            self.connection.send(dict(message))

    def serve(self) -> None:
        while True:
            try:
                request: dict[str, Any] = self.connection.recv()
            except (EOFError, OSError):
                return  # the stack is gone
            if request.get("op") == "stop":
                return
            self._pool.submit(self._answer, request)

    def _answer(self, request: Mapping[str, Any]) -> None:
        op, answer = request.get("op"), {"id": request.get("id")}
        retire = False
        if op == "invoke":
            answer["invocation"], retire = invoke(self.sandbox, str(request["request_id"]), str(request["event_json"]))
        elif op == "warm":
            try:
                self.sandbox.handler()
                answer["ok"] = True
            except HandlerInitError:
                answer["ok"], retire = False, True
        answer["stats"], answer["retire"] = self.stats(), retire
        try:
            self.send(answer)
        except (OSError, ValueError) as exc:  # the stack closed the connection
            log.warning("%s: could not answer the stack: %s", self.config.name, exc)
        if retire:
            exit_now()  # the sandbox is gone; a killed invocation's threads go with it


def exit_now() -> None:
    """End the process at once: threads a killed invocation left behind would keep a normal
    exit waiting."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    """``python -c ... local.lambda_worker`` with the connection's file descriptor as argv[1]."""
    connection = Connection(int(sys.argv[1]))
    config = WorkerConfig(**connection.recv())
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("local").setLevel(config.log_level)
    worker = Worker(connection, config)
    worker.setup()
    connection.send({"id": 0, "ready": True})
    worker.serve()
    with contextlib.suppress(OSError, ValueError):
        worker.send({"id": -1, "stats": worker.stats()})  # the final counts
    connection.close()
    exit_now()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
