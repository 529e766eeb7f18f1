"""Run a handler the way Lambda does: each sandbox of each function in a process of its own.

``LambdaFunction`` runs its handler in sandboxes, each a ``local.lambda_worker`` process whose
environment is exactly the function's (``LambdaFunction.process_environment``): what its
template entry gives it with local values, the Lambda runtime's own variables, and
``PYTHONPATH`` = its code directory and the layer. Nothing of the stack's environment, modules or
caches reaches it, so a variable or a grant the template forgets fails here as it would on AWS.

A sandbox serves one invocation at a time, like Lambda's execution environment: a library's
process-wide state (a class attribute, a module cache) is never seen by two invocations at once.
The function keeps its idle sandboxes and reuses the one used last; when all are busy it starts
another (a cold start), up to ``max_concurrency``; beyond that an invocation waits for one to
come free. Events and answers go through JSON like Lambda's, and the context object has the
runtime's attributes.

An invocation cut off by the ``kill`` fault of ``local.aws_faults``, or one that runs past its
timeout, fails like a Lambda timeout (``Task timed out``) and its sandbox's process ends; a
crashed process is replaced on the next invocation. Every process's output goes to the stack's
stdout/stderr, each line tagged with its function (``tag_line``). Fault counts and environment
reads are kept per process and added up per function (``fault_report``, ``env_reads``).

Cost: a Python process per sandbox, ~0.15 s CPU and ~40 MB to start, ~75 MB once its first
invocation has imported boto3 and the domain package. Extra sandboxes start only under load, so
a quiet stack runs one per function (six); one with every sandbox busy runs 29 (~2.2 GB), and
keeps them until it stops.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

from local.aws_faults import FaultConfig
from local.client import LOCAL_CREDENTIALS, REPO_ROOT

LOCAL_ACCOUNT_ID = "123456789012"  # moto's default account

LAYER_PATHS = (REPO_ROOT / "layers" / "domain",)  # the domain layer, /opt/python on Lambda

log = logging.getLogger("local.lambda")


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


class WorkerGone(RuntimeError):
    """The sandbox's process exited (or could not start) before it answered."""


class FunctionThrottled(RuntimeError):
    """Every sandbox the function may run stayed busy (Lambda's TooManyRequestsException)."""


@dataclass(frozen=True)
class WorkerConfig:
    """What the function's process is told first (``local.lambda_worker``)."""

    name: str
    handler_file: str
    handler_attr: str
    function_name: str
    timeout_seconds: float
    memory_mb: int
    sandbox: int  # the sandbox's number within its function, from 1 (seeds its faults)
    region: str
    account_id: str
    aws_faults: dict[str, Any] | None = None
    record_aws_calls: str | None = None
    strict_env: bool = False
    log_level: int = logging.INFO


# The worker is started with the repository on sys.path for ``local`` only, then takes it off:
# the handler sees its code directory and the layer, like /var/task and /opt/python.
_BOOT = (
    "import sys; root = sys.argv[1]; sys.path.insert(0, root); import local.lambda_worker as worker; "
    "sys.path.remove(root); sys.argv[1:] = sys.argv[2:]; worker.main()"
)
# Lambda's own PATH, after the directory of this interpreter (the venv stands in for the runtime).
_LAMBDA_PATH = "/usr/local/bin:/usr/bin/:/bin:/opt/bin"
# How long past its timeout an invocation may go unanswered before its process is ended.
INVOKE_GRACE_SECONDS = 30.0
WORKER_START_TIMEOUT = 60.0
WORKER_STOP_TIMEOUT = 10.0
_OUTPUT_LOCK = threading.Lock()  # one line at a time from every function's output


def tag_line(function: str, line: str) -> str:
    """A line of a function's output, tagged with the function: a JSON log line gets a
    ``function`` key first (it stays one JSON object), any other line a ``[function]`` prefix."""
    text = line.rstrip("\r\n")
    if text.startswith("{") and text.endswith("}"):
        rest = text[1:].lstrip()
        return '{"function": ' + json.dumps(function) + ("}" if rest == "}" else ", " + rest)
    return f"[{function}] {text}"


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    answer: dict[str, Any] | None = None
    gone: str | None = None


class _Worker:
    """One sandbox: a process running the function's handler (``local.lambda_worker``) and its connection."""

    def __init__(self, function: LambdaFunction, number: int) -> None:
        self.function = function
        self.number = number
        ours, theirs = socket.socketpair()
        code_dir = function.handler_file.resolve().parent
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(REPO_ROOT), str(theirs.fileno())],
                cwd=code_dir,
                env=function.process_environment(),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # Ctrl-C reaches the stack, which stops its functions in order
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.connection = Connection(ours.detach())
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._pending_lock = threading.Lock()
        self._ids = itertools.count(1)
        self.stats: dict[str, Any] = {}
        self.gone: str | None = None
        self.retired = False  # never to be reused: its last invocation was killed or timed out
        self._stderr_tail: list[str] = []
        label = f"lambda-{function.name}-{number}"
        self.threads = [
            threading.Thread(target=self._read, name=f"{label}-answers", daemon=True),
            threading.Thread(target=self._forward, args=(self.process.stdout, False), name=f"{label}-stdout", daemon=True),
            threading.Thread(target=self._forward, args=(self.process.stderr, True), name=f"{label}-stderr", daemon=True),
        ]
        self.send(asdict(function.worker_config(number)))
        for thread in self.threads:
            thread.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.gone is None and not self.retired

    def send(self, message: dict[str, Any]) -> None:
        with self._send_lock:
            self.connection.send(message)

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send ``message`` and wait for its answer; WorkerGone if the process ends first,
        TimeoutError after ``timeout``. An answer that says ``retire`` retires this sandbox."""
        pending = _Pending()
        with self._pending_lock:
            if self.gone is not None:
                raise WorkerGone(self.gone)
            request_id = next(self._ids)
            self._pending[request_id] = pending
        with contextlib.suppress(OSError, ValueError):  # the reader sees the process go and fails the request
            self.send({**message, "id": request_id})
        if not pending.done.wait(timeout):
            with self._pending_lock:
                self._pending.pop(request_id, None)
            raise TimeoutError(f"{self.function.name} did not answer within {timeout:g} s")
        if pending.answer is None:
            raise WorkerGone(pending.gone or "the sandbox's process exited")
        if pending.answer.get("retire"):
            self.retired = True
        return pending.answer

    def ask_to_stop(self) -> None:
        """Ask the process to stop (it sends its final counts and exits)."""
        with contextlib.suppress(OSError, ValueError):
            self.send({"op": "stop"})

    def wait_stopped(self) -> None:
        """Wait for the process asked to stop, kill it if it must, and for its output's end."""
        try:
            self.process.wait(WORKER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("%s: sandbox %d's process did not stop: killing it", self.function.name, self.number)
            self.kill()
        for thread in self.threads:
            thread.join(WORKER_STOP_TIMEOUT)

    def kill(self) -> None:
        self.retired = True
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WORKER_STOP_TIMEOUT)

    def _read(self) -> None:
        while True:
            try:
                answer: dict[str, Any] = self.connection.recv()
            except (EOFError, OSError):
                break
            if "stats" in answer:
                self.stats = answer["stats"]
            with self._pending_lock:
                pending = self._pending.pop(answer.get("id", 0), None)
            if pending is not None:
                pending.answer = answer
                pending.done.set()
        code = self.process.wait(WORKER_STOP_TIMEOUT) if self.process.poll() is None else self.process.returncode
        tail = "".join(self._stderr_tail[-5:]).strip()
        reason = f"the sandbox's process exited with code {code}" + (f": {tail[-500:]}" if tail and code else "")
        with self._pending_lock:
            self.gone = reason
            pending_requests, self._pending = list(self._pending.values()), {}
        for pending in pending_requests:
            pending.gone = reason
            pending.done.set()
        self.connection.close()

    def _forward(self, pipe: IO[bytes] | None, is_stderr: bool) -> None:
        if pipe is None:
            return
        name = self.function.name
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            if is_stderr:
                self._stderr_tail = [*self._stderr_tail[-19:], line]
            target = sys.stderr if is_stderr else sys.stdout
            with _OUTPUT_LOCK:
                target.write(tag_line(name, line) + "\n")
                target.flush()
        pipe.close()


class LambdaFunction:
    """One function: its handler file, run in sandboxes, each a process of its own with the
    function's environment and serving one invocation at a time.

    ``environment`` is the function's configuration (its template environment with local
    values, plus the stack's local settings); each process gets it, the Lambda runtime's own
    variables and ``PYTHONPATH`` (the handler's directory, then ``layer_paths``), nothing else.
    ``start()`` starts the first sandbox (without waiting), ``warm()`` loads the handler in it
    (the cold start); ``invoke()`` takes the idle sandbox used last, or starts one more while
    fewer than ``max_concurrency`` run, or waits (bounded) for one to come free. A sandbox whose
    process exited is replaced on the next call.
    """

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
        environment: Mapping[str, str] | None = None,
        layer_paths: Sequence[Path] = LAYER_PATHS,
        aws_faults: FaultConfig | None = None,
        record_aws_calls: Path | None = None,
        strict_env: bool = False,
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
        self.environment = dict(environment or {})
        self.layer_paths = tuple(layer_paths)
        self.aws_faults = aws_faults
        self.record_aws_calls = record_aws_calls
        self.strict_env = strict_env
        self._free = threading.Condition()  # guards what follows; notified when a sandbox is free
        self._idle: list[_Worker] = []  # the last one released last: Lambda reuses the warmest
        self._busy: set[_Worker] = set()
        self._numbers = itertools.count(1)
        self._past_stats: list[dict[str, Any]] = []  # of processes that ended
        self._closed = False

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"

    def exists(self) -> bool:
        return self.handler_file.is_file()

    def process_environment(self) -> dict[str, str]:
        """Exactly what each sandbox's process gets (Lambda's runtime variables, then its own)."""
        code_dir = self.handler_file.resolve().parent
        runtime = {
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.function_name}",
            "_HANDLER": f"{self.handler_file.stem}.{self.handler_attr}",
            "LAMBDA_TASK_ROOT": str(code_dir),
            # The role's credentials on Lambda; moto's test credentials here.
            "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
            "AWS_EC2_METADATA_DISABLED": "true",  # never look for an instance role
            "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon locally
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), _LAMBDA_PATH]),
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "PYTHONPATH": os.pathsep.join([str(code_dir), *(str(path) for path in self.layer_paths)]),
            "PYTHONUNBUFFERED": "1",  # log lines reach the stack's log as they are written
        }
        return {**runtime, **self.environment}

    def worker_config(self, sandbox: int) -> WorkerConfig:
        faults = self.aws_faults
        return WorkerConfig(
            name=self.name,
            handler_file=str(self.handler_file.resolve()),
            handler_attr=self.handler_attr,
            function_name=self.function_name,
            timeout_seconds=self.timeout_seconds,
            memory_mb=self.memory_mb,
            sandbox=sandbox,
            region=self.region,
            account_id=self.account_id,
            aws_faults=faults.to_json() if faults is not None else None,
            record_aws_calls=str(self.record_aws_calls) if self.record_aws_calls else None,
            strict_env=self.strict_env,
            log_level=logging.getLogger("local").getEffectiveLevel(),
        )

    # ------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the first sandbox's process now (without waiting for it): several start in parallel."""
        with self._free:
            if self._closed or self._idle or self._busy:
                return
            self._idle.append(self._new_worker())

    def close(self) -> None:
        """Stop every sandbox's process (their final counts are kept); idempotent."""
        with self._free:
            self._closed = True
            workers = [*self._idle, *self._busy]
            self._idle, self._busy = [], set()
            self._free.notify_all()
        for worker in workers:
            worker.ask_to_stop()
        for worker in workers:
            worker.wait_stopped()
        with self._free:
            self._past_stats.extend(worker.stats for worker in workers)

    def sandbox_pids(self) -> list[int]:
        """The process ids of the sandboxes now running (idle or busy)."""
        with self._free:
            return sorted(worker.pid for worker in [*self._idle, *self._busy] if worker.alive())

    def _new_worker(self) -> _Worker:
        number = next(self._numbers)
        if number > 1:
            log.info("%s: cold start of sandbox %d (%d busy)", self.name, number, len(self._busy))
        return _Worker(self, number)

    def _acquire(self, wait: float) -> _Worker:
        """A sandbox for one invocation: the idle one used last, else a new one while fewer than
        ``max_concurrency`` run, else the first to come free within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        with self._free:
            while True:
                if self._closed:
                    raise WorkerGone(f"{self.name} is stopped")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive():
                        self._busy.add(worker)
                        return worker
                    log.warning("%s: sandbox %d: %s; replacing it", self.name, worker.number, worker.gone)
                    self._past_stats.append(worker.stats)
                if len(self._busy) < self.max_concurrency:
                    worker = self._new_worker()
                    self._busy.add(worker)
                    return worker
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FunctionThrottled(f"{self.name}: all {self.max_concurrency} sandboxes stayed busy for {wait:g} s")
                self._free.wait(left)

    def _release(self, worker: _Worker) -> None:
        with self._free:
            if worker not in self._busy:
                return  # close() took it
            self._busy.discard(worker)
            if worker.alive():
                self._idle.append(worker)
            else:
                self._past_stats.append(worker.stats)
            self._free.notify()
        if worker.retired and worker.gone is None:
            # Its process ends by itself (or was killed); reap it off the caller's path.
            threading.Thread(target=worker.wait_stopped, name=f"lambda-{self.name}-{worker.number}-end", daemon=True).start()

    # ----------------------------------------------------------------------- invocation

    def warm(self) -> bool:
        """Load the handler in a sandbox now (the cold start); log and return False if the module fails."""
        try:
            worker = self._acquire(WORKER_START_TIMEOUT)
        except (WorkerGone, FunctionThrottled, OSError) as exc:
            log.error("%s: the function could not start: %s", self.name, exc)
            return False
        try:
            answer = worker.request({"op": "warm"}, WORKER_START_TIMEOUT)
        except (WorkerGone, TimeoutError, OSError) as exc:
            log.error("%s: the function could not start: %s", self.name, exc)
            worker.kill()
            return False
        finally:
            self._release(worker)
        return bool(answer.get("ok"))

    def invoke(self, event: Any) -> Invocation:
        """Invoke the handler with a JSON copy of ``event`` in a sandbox of its own; never raises."""
        request_id = str(uuid.uuid4())
        started = time.monotonic()
        try:
            event_json = json.dumps(event)
        except (TypeError, ValueError) as exc:
            return Invocation(request_id, ok=False, error=f"Runtime.MarshalError: the event is not JSON: {exc}")
        limit = self.timeout_seconds + INVOKE_GRACE_SECONDS
        try:
            worker = self._acquire(limit)
        except FunctionThrottled as exc:
            log.error("%s: request %s throttled: %s", self.name, request_id, exc)
            return Invocation(request_id, ok=False, error=f"TooManyRequestsException: {exc}", duration=time.monotonic() - started)
        except (WorkerGone, OSError) as exc:
            log.error("%s: request %s failed: %s", self.name, request_id, exc)
            return Invocation(request_id, ok=False, error=f"Runtime.ExitError: {exc}", duration=time.monotonic() - started)
        try:
            answer = worker.request({"op": "invoke", "request_id": request_id, "event_json": event_json}, limit)
        except TimeoutError:  # first: it is an OSError
            # A handler hanging well past its timeout: Lambda would have ended its sandbox; so do we.
            log.error("%s: request %s hangs past the %s s timeout: ending sandbox %d", self.name, request_id, self.timeout_seconds, worker.number)
            worker.kill()
            return Invocation(request_id, ok=False, error=f"Task timed out after {self.timeout_seconds:.2f} seconds", duration=time.monotonic() - started)
        except (WorkerGone, OSError) as exc:
            log.error("%s: request %s failed: %s", self.name, request_id, exc)
            return Invocation(request_id, ok=False, error=f"Runtime.ExitError: {exc}", duration=time.monotonic() - started)
        finally:
            self._release(worker)
        outcome = answer["invocation"]
        result_json = outcome.get("result_json")
        return Invocation(
            request_id,
            ok=bool(outcome["ok"]),
            result=json.loads(result_json) if outcome["ok"] and result_json is not None else None,
            error=outcome.get("error"),
            duration=float(outcome["duration"]),
        )

    # ---------------------------------------------------------------------------- stats

    def _all_stats(self) -> list[dict[str, Any]]:
        with self._free:
            return [*self._past_stats, *(worker.stats for worker in [*self._idle, *self._busy])]

    def fault_report(self) -> dict[str, Any] | None:
        """This function's AWS faults so far, all its sandboxes' added up (``aws_faults.FaultInjector.report()``'s shape)."""
        if self.aws_faults is None:
            return None
        return merge_fault_reports(self.aws_faults, [stats.get("faults") for stats in self._all_stats()])

    def env_reads(self) -> list[dict[str, Any]]:
        """The ``Settings`` fields any of this function's sandboxes read with no variable set (their default)."""
        reads: dict[str, dict[str, Any]] = {}
        for stats in self._all_stats():
            for read in stats.get("env_reads") or ():
                reads.setdefault(read["field"], read)
        return sorted(reads.values(), key=lambda read: str(read["variable"]))


def merge_fault_reports(config: FaultConfig, reports: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Several injectors' reports of the same rules as one: the counts added up."""
    rules = [{**rule.to_json(), "applied": 0, "eligible": 0} for rule in config.rules]
    for report in reports:
        for total, counted in zip(rules, (report or {}).get("rules", ()), strict=False):
            total["applied"] += counted["applied"]
            total["eligible"] += counted["eligible"]
    return {"seed": config.seed, "rules": rules}
