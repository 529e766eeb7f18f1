"""The local stack: moto server + the provider simulator + the handlers, fed like on AWS.

``python -m local.stack`` (what ``make local`` runs) starts moto server and the simulator as
subprocesses on 127.0.0.1, provisions the contract's resources with the template's settings,
loads the handlers (``functions/<name>/app.py``) into this process after setting their
environment, and runs the event sources: SQS -> submit, the jobs table's stream -> finalize, an
HTTP API v2 emulator -> callback (and any Schedule event of the template). It writes
``.local/stack.json`` and runs until SIGINT/SIGTERM.

``--aws-faults JSON`` (or ``aws_faults=``) makes AWS fail the handlers' calls at a seeded rate
and cuts invocations off, as described in ``local.aws_faults``; what was injected goes to
``<workdir>/aws-faults.json``. Without it nothing is injected.

The handlers' environment is process-wide, so a process runs one stack. Tests start it as a
subprocess with ``spawn()`` (or ``spawned()``) and stop it with ``terminate()``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Protocol, TypeVar

from local.apigw import HttpApiEmulator, Route
from local.aws_faults import AwsFaultsError, FaultConfig, FaultInjector, ReportWriter, parse_config
from local.client import DEFAULT_WORKDIR, REPO_ROOT, STACK_JSON, answers, aws_client, free_port, stack_json_path, wait_for
from local.dispatcher import ScheduleEventSource, SqsEventSource, StreamEventSource
from local.lambda_runtime import LOCAL_ACCOUNT_ID, LambdaFunction
from local.provision import ResourceNames, Resources, provision
from local.template_config import TemplateConfig, load_template_config

log = logging.getLogger("local.stack")
_T = TypeVar("_T")

REGION = "us-east-1"
LOCAL_PROVIDERS = ("kie", "apikley", "runware", "crun")
DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"
LAYER_PATHS = (REPO_ROOT / "layers" / "domain",)
UNREACHABLE_PROVIDER_URL = "http://127.0.0.1:9"  # the discard port: refused at once
STARTUP_TIMEOUT = 30.0
SUBPROCESS_STOP_TIMEOUT = 10.0
THREAD_JOIN_TIMEOUT = 10.0

# Set by the local stack whatever the template says (local configuration, not code paths).
_LOCAL_ONLY = ("CALLBACK_API_URL", "PROVIDER_ENDPOINTS", "RESULT_HOSTS", "ALLOW_HTTP_RESULT_URLS")
# Variables of the outer environment that would send boto3 elsewhere than moto.
_AWS_VARIABLES_TO_DROP = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


class _Stoppable(Protocol):
    def stop(self) -> None: ...

    def join(self, timeout: float) -> list[str]: ...


class LocalStack:
    """Start, run and stop the local stack (see the module's docstring).

    ``handlers`` maps a function name (``submit``, ``callback``, ``finalize``...) to a handler file
    to use instead of ``functions/<name>/app.py`` (tests give fake handlers). Ports left None are
    taken from ``ALEPH_MOTO_PORT``/``ALEPH_API_PORT``/``ALEPH_SIMULATOR_PORT`` or chosen free.
    ``start()`` sets ``os.environ`` to the handlers' environment (restored by ``stop()``).
    """

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        moto_port: int | None = None,
        api_port: int | None = None,
        simulator_port: int | None = None,
        simulator: bool = True,
        simulator_url: str | None = None,
        handlers: Mapping[str, str | Path] | None = None,
        template: str | Path | None = DEFAULT_TEMPLATE,
        sqs_concurrency: int = 4,
        sqs_wait_seconds: int = 1,
        sqs_time_scale: float | None = None,
        stream_lanes: int = 4,
        stream_retry_backoff: float = 0.2,
        stream_max_retries: int | None = None,
        schedule_interval: float | None = None,
        api_concurrency: int = 8,
        handler_env: Mapping[str, str] | None = None,
        aws_faults: str | Mapping[str, Any] | FaultConfig | None = None,
    ) -> None:
        self.workdir = Path(workdir) if workdir else DEFAULT_WORKDIR
        self.moto_port = moto_port if moto_port is not None else _env_port("ALEPH_MOTO_PORT")
        self.api_port = api_port if api_port is not None else _env_port("ALEPH_API_PORT")
        self.simulator_port = simulator_port if simulator_port is not None else _env_port("ALEPH_SIMULATOR_PORT")
        self.simulator_enabled = simulator and simulator_url is None
        self.simulator_url: str | None = simulator_url.rstrip("/") if simulator_url else None
        self.handler_overrides = {k: Path(v) for k, v in (handlers or {}).items()}
        # Settings a test or a user changes for the handlers (e.g. shorter grace periods).
        self.handler_env_overrides = dict(handler_env or {})
        self.template_path = Path(template) if template else None
        self.sqs_concurrency = sqs_concurrency
        self.sqs_wait_seconds = sqs_wait_seconds
        # Each queue's VisibilityTimeout from the template times this (ALEPH_SQS_TIME_SCALE, else 1):
        # the time a received message that was not deleted takes to come back.
        self.sqs_time_scale = sqs_time_scale if sqs_time_scale is not None else float(os.environ.get("ALEPH_SQS_TIME_SCALE") or 1.0)
        if not self.sqs_time_scale > 0:
            raise ValueError(f"sqs_time_scale must be above 0, got {self.sqs_time_scale}")
        self.stream_lanes = stream_lanes
        self.stream_retry_backoff = stream_retry_backoff
        self.stream_max_retries = stream_max_retries
        self.schedule_interval = schedule_interval
        self.api_concurrency = api_concurrency
        # Parsed now: a bad configuration is refused before anything starts.
        self.aws_faults = aws_faults if isinstance(aws_faults, FaultConfig) or aws_faults is None else parse_config(aws_faults)
        self.fault_injector: FaultInjector | None = None

        self.config: TemplateConfig | None = None
        self.resources: Resources | None = None
        self.functions: dict[str, LambdaFunction] = {}
        self.moto_url: str | None = None
        self.api: HttpApiEmulator | None = None
        self.warnings: list[str] = []
        self._env: dict[str, str] = {}
        self._info: dict[str, Any] | None = None
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._log_files: list[Any] = []
        self._sources: list[_Stoppable] = []
        self._fault_report: ReportWriter | None = None
        self._saved_environ: dict[str, str | None] = {}
        self._added_sys_path: list[str] = []
        self._started = False

    # ------------------------------------------------------------------------- public API

    @property
    def info(self) -> dict[str, Any]:
        """The ``stack.json`` contents (after ``start()``)."""
        if self._info is None:
            raise RuntimeError("the stack is not started")
        return dict(self._info)

    @property
    def env(self) -> dict[str, str]:
        """The handlers' environment (after ``start()``)."""
        if not self._env:
            raise RuntimeError("the stack is not started")
        return dict(self._env)

    @property
    def stack_json(self) -> Path:
        return stack_json_path(self.workdir)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> LocalStack:
        """Start everything; on any failure, stop what was started and raise."""
        if self._started:
            return self
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the event sources and the API, then the subprocesses; idempotent."""
        if not self._started:
            return
        self._started = False
        log.info("stopping the local stack")
        if self.api is not None:
            self.api.stop()
        for source in self._sources:
            source.stop()
        deadline = time.monotonic() + THREAD_JOIN_TIMEOUT
        for source in self._sources:
            stuck = source.join(max(0.0, deadline - time.monotonic()))
            if stuck:
                log.warning("threads still busy at shutdown (left behind): %s", ", ".join(stuck))
        self._sources.clear()
        if self._fault_report is not None:
            self._fault_report.stop()
            self._fault_report.join(THREAD_JOIN_TIMEOUT)  # writes the final counts
            self._fault_report = None
        if self.fault_injector is not None:
            self.fault_injector.uninstall()
            self.fault_injector = None
        for name, process in reversed(self._processes):
            _stop_process(name, process)
        self._processes.clear()
        for handle in self._log_files:
            handle.close()
        self._log_files.clear()
        with contextlib.suppress(FileNotFoundError):
            if self._info is not None and self.stack_json.is_file():
                current = json.loads(self.stack_json.read_text(encoding="utf-8"))
                if current.get("pid") == os.getpid():
                    self.stack_json.unlink()
        self._restore_environ()
        self._info = None
        log.info("local stack stopped")

    def wait(self, stop_event: threading.Event) -> bool:
        """Block until ``stop_event`` is set (the CLI sets it on SIGINT/SIGTERM) or a subprocess dies.

        Returns False if moto server or the simulator exited on its own.
        """
        while not stop_event.wait(1.0):
            for name, process in self._processes:
                if process.poll() is not None:
                    log.error("%s exited with code %s: stopping the stack", name, process.returncode)
                    return False
        return True

    # -------------------------------------------------------------------------- starting

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.stack_json.unlink()
        self.config = load_template_config(self.template_path)
        self.warnings.extend(self.config.warnings)

        self.moto_url = self._start_moto()
        if self.simulator_enabled:
            self.simulator_url = self._start_simulator()

        def client(service: str) -> Any:
            return aws_client(service, endpoint_url=self.moto_url, region=REGION)

        self.resources = provision(client, self.config, region=REGION, names=ResourceNames())

        # Every function's HttpApi routes, each to its own function (callback, status, ...).
        routes = [Route(r.method, r.path, f.name) for f in self.config.functions.values() for r in f.routes]
        self.api = HttpApiEmulator(routes, None, port=self.api_port or 0)

        self._env = self._handler_environment()
        self._apply_environ(self._env)
        self._install_aws_faults()  # before the handlers load, so every client they make has the hooks
        self._build_functions()
        self.api.function = self.functions.get("callback")
        self.api.functions = self.functions
        self._start_sources(client)
        self.api.start()

        self._info = self._stack_info()
        _write_json_atomic(self.stack_json, self._info)
        for warning in self.warnings:
            log.warning("%s", warning)
        log.info("local stack ready: %s", self.stack_json)

    def _start_moto(self) -> str:
        attempts = 1 if self.moto_port is not None else 3
        for attempt in range(attempts):
            port = self.moto_port or free_port()
            if not _port_free(port):
                raise RuntimeError(f"port {port} for moto server is already in use (ALEPH_MOTO_PORT?)")
            process = self._spawn_child("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)])
            url = f"http://127.0.0.1:{port}"

            def ready(process: subprocess.Popen[bytes] = process, url: str = url) -> bool:
                return _process_alive(process, "moto server") and answers(f"{url}/moto-api/")

            try:
                wait_for(ready, timeout=STARTUP_TIMEOUT, interval=0.05, message=f"moto server on {url}")
            except ChildExited:
                if attempt + 1 < attempts:
                    log.warning("moto server could not start on port %s; trying another port", port)
                    continue
                raise
            log.info("moto server on %s", url)
            return url
        raise RuntimeError("moto server did not start")

    def _start_simulator(self) -> str:
        package = REPO_ROOT / "local" / "simulator"
        if not (package / "__main__.py").is_file():
            raise RuntimeError(f"{package}/__main__.py not found: run with --no-simulator (or simulator=False)")
        ready_file = self.workdir / "simulator.ready"
        with contextlib.suppress(FileNotFoundError):
            ready_file.unlink()
        port = self.simulator_port or free_port()
        process = self._spawn_child(
            "simulator",
            [sys.executable, "-m", "local.simulator", "--host", "127.0.0.1", "--port", str(port), "--ready-file", str(ready_file)],
        )

        def ready_url() -> str | None:
            _process_alive(process, "the simulator")
            text = ready_file.read_text(encoding="utf-8").strip() if ready_file.is_file() else ""
            return text or None

        url = wait_for(ready_url, timeout=STARTUP_TIMEOUT, interval=0.05, message="the simulator's ready file")
        log.info("provider simulator on %s", url)
        return url.rstrip("/")

    def _spawn_child(self, name: str, command: Sequence[str]) -> subprocess.Popen[bytes]:
        log_path = self.workdir / f"{name}.log"
        handle = log_path.open("wb")
        self._log_files.append(handle)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        process = subprocess.Popen(
            list(command),
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            # Its own process group: Ctrl-C reaches the stack only, which stops it in order.
            start_new_session=True,
            preexec_fn=_die_with_parent if _can_die_with_parent() else None,  # noqa: PLW1509
        )
        self._processes.append((name, process))
        return process

    def _handler_environment(self) -> dict[str, str]:
        config, resources, api = _need(self.config), _need(self.resources), _need(self.api)
        env: dict[str, str] = {
            # The contract's table, with the local values.
            "JOBS_TABLE_NAME": resources.names.jobs_table,
            "INPUT_BUCKET_NAME": resources.names.input_bucket,
            "OUTPUT_BUCKET_NAME": resources.names.output_bucket,
            "INPUT_PREFIX": resources.input_prefix,
            "DEFAULT_PROVIDER": "kie",
            "PROVIDER_SECRET_ID": resources.names.secret_id,
            "PRESIGNED_URL_TTL_SECONDS": "3600",
            "PAIRING_TIMEOUT_SECONDS": "3600",
            "JOB_DEADLINE_SECONDS": "86400",
            "MAX_RESULT_BYTES": "2147483648",
            "POWERTOOLS_SERVICE_NAME": "aleph-pipeline",
            "POWERTOOLS_METRICS_NAMESPACE": "AlephPipeline",
        }
        refs: dict[str, str] = {
            "AWS::Region": REGION,
            "AWS::AccountId": LOCAL_ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": "aleph",
        }
        for role, value in resources.role_values().items():
            logical_id = config.logical_id(role)
            if logical_id:
                refs[logical_id] = value
        for function in config.functions:
            from_template, problems = config.resolve_environment(function, refs)
            env.update(from_template)
            self.warnings.extend(message for name, message in problems.items() if name not in _LOCAL_ONLY)

        base = self.simulator_url or UNREACHABLE_PROVIDER_URL
        env.update(
            {
                "CALLBACK_API_URL": api.url,
                "PROVIDER_ENDPOINTS": json.dumps({p: f"{base}/{p}" for p in LOCAL_PROVIDERS}),
                "RESULT_HOSTS": json.dumps({p: ["127.0.0.1"] for p in LOCAL_PROVIDERS}),
                "ALLOW_HTTP_RESULT_URLS": "true",
                "AWS_ENDPOINT_URL": str(self.moto_url),
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_EC2_METADATA_DISABLED": "true",
                "POWERTOOLS_TRACE_DISABLED": "true",
            }
        )
        env.update(self.handler_env_overrides)
        return env

    def _apply_environ(self, env: Mapping[str, str]) -> None:
        drop = [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL_") or k in _AWS_VARIABLES_TO_DROP]
        for key in [*env, *drop]:
            self._saved_environ.setdefault(key, os.environ.get(key))
        for key in drop:
            os.environ.pop(key, None)
        os.environ.update(env)
        no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
        if "127.0.0.1" not in no_proxy:
            for key in ("NO_PROXY", "no_proxy"):
                self._saved_environ.setdefault(key, os.environ.get(key))
                os.environ[key] = ",".join(filter(None, [no_proxy, "127.0.0.1", "localhost"]))
        # Like the layer on Lambda (/opt/python): the domain package is importable.
        for path in (str(p) for p in LAYER_PATHS):
            if path not in sys.path:
                sys.path.insert(0, path)
                self._added_sys_path.append(path)

    def _restore_environ(self) -> None:
        for key, value in self._saved_environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_environ.clear()
        for path in self._added_sys_path:
            with contextlib.suppress(ValueError):
                sys.path.remove(path)
        self._added_sys_path.clear()

    @property
    def aws_faults_report(self) -> Path:
        return self.workdir / "aws-faults.json"

    def _install_aws_faults(self) -> None:
        if self.aws_faults is None:
            return
        unknown = sorted(self.aws_faults.functions - set(_need(self.config).functions))
        if unknown:
            known = ", ".join(sorted(_need(self.config).functions))
            raise AwsFaultsError(f"aws-faults: rules name unknown function(s) {', '.join(unknown)} (the stack runs: {known})")
        self.fault_injector = FaultInjector(self.aws_faults).install()
        self._fault_report = ReportWriter(self.fault_injector, self.aws_faults_report)
        self._fault_report.start()
        log.info("aws-faults: seed %s, %d rule(s); counts in %s", self.aws_faults.seed, len(self.aws_faults.rules), self.aws_faults_report)

    def _build_functions(self) -> None:
        lanes, api = self.stream_lanes, self.api_concurrency
        concurrency = {"submit": self.sqs_concurrency, "finalize": lanes, "notify": lanes, "callback": api, "status": api}
        for name, spec in _need(self.config).functions.items():
            path = self.handler_overrides.get(name, REPO_ROOT / spec.handler_file)
            function = LambdaFunction(
                name,
                path,
                handler_attr=spec.handler_attr if name not in self.handler_overrides else "lambda_handler",
                timeout_seconds=spec.timeout_seconds,
                memory_mb=spec.memory_mb,
                max_concurrency=concurrency.get(name, 1),
                region=REGION,
            )
            if not function.exists():
                self.warnings.append(f"{name}: handler {path} not found: its events are not delivered")
                continue
            function.warm()  # the cold start: import errors show now, with their traceback
            self.functions[name] = function

    def _start_sources(self, client: Any) -> None:
        config, resources, api = _need(self.config), _need(self.resources), _need(self.api)
        # The HTTP API's routes with the authorizer the template gives each (AWS_IAM: SigV4 only).
        api.routes = [Route(r.method, r.path, f.name, r.authorizer) for f in config.functions.values() for r in f.routes]
        # Each function's SQS event, as an event source mapping: submit reads the submit queue;
        # notify reads the job events EventBridge did not take (UndeliveredJobEventQueue).
        undelivered_visibility = (config.resources.get(config.logical_id("undelivered_events") or "", {}).get("Properties") or {}).get("VisibilityTimeout")
        queues = {
            "submit": (resources.submit_queue_url, resources.submit_queue_arn, self.sqs_concurrency, config.submit_queue.visibility_timeout),
            "notify": (resources.undelivered_events_url, resources.undelivered_events_arn, 1, undelivered_visibility),
        }
        for name, (queue_url, queue_arn, concurrency, visibility) in queues.items():
            spec = config.functions.get(name)
            if name not in self.functions or spec is None or spec.sqs is None or not queue_url:
                continue
            # Like Lambda's poller, the source does nothing to a message whose invocation failed:
            # it comes back when the queue's visibility timeout ends, whatever happened to the
            # invocation (an error, batchItemFailures, a kill). So the queue itself gets the scaled
            # visibility timeout (VisibilityTimeout x sqs_time_scale, at least 1 s).
            if isinstance(visibility, int | str) and str(visibility).isdigit():
                scaled = max(1, round(int(visibility) * self.sqs_time_scale))
                client("sqs").set_queue_attributes(QueueUrl=queue_url, Attributes={"VisibilityTimeout": str(scaled)})
                log.info("%s: visibility timeout %s s (template %s s x %g)", queue_url.rsplit("/", 1)[-1], scaled, visibility, self.sqs_time_scale)
            else:
                self.warnings.append(f"{name}: the template gives its queue no readable VisibilityTimeout: the provisioned one applies, unscaled")
            self._start_source(
                SqsEventSource(
                    self.functions[name],
                    queue_url=queue_url,
                    queue_arn=queue_arn,
                    region=REGION,
                    client_factory=client,
                    batch_size=spec.sqs.batch_size,
                    report_batch_item_failures=spec.sqs.report_batch_item_failures,
                    concurrency=concurrency,
                    wait_seconds=self.sqs_wait_seconds,
                )
            )
        # Each function with a stream event (finalize, notify) reads the stream on its own, like
        # one event source mapping each; on-failure records go to that function's queue.
        on_failure = {"finalize": resources.finalize_dlq_url, "notify": resources.notify_dlq_url}
        for name, spec in config.functions.items():
            if name not in self.functions or spec.stream is None:
                continue
            stream = spec.stream
            self._start_source(
                StreamEventSource(
                    self.functions[name],
                    table_name=resources.names.jobs_table,
                    region=REGION,
                    client_factory=client,
                    filters=stream.filters,
                    batch_size=stream.batch_size,
                    report_batch_item_failures=stream.report_batch_item_failures,
                    bisect_on_error=stream.bisect_on_error,
                    maximum_retry_attempts=(stream.maximum_retry_attempts if self.stream_max_retries is None else self.stream_max_retries),
                    # The contract's on-failure queue; a template without a destination drops them.
                    on_failure_queue_url=(on_failure.get(name) if stream.on_failure_ref or config.source is None else None),
                    lanes=self.stream_lanes,
                    retry_backoff_seconds=self.stream_retry_backoff,
                )
            )
        for name, spec in config.functions.items():
            if name in self.functions:
                for index, schedule in enumerate(spec.schedules):
                    self._start_source(
                        ScheduleEventSource(
                            self.functions[name],
                            interval_seconds=self.schedule_interval or schedule.interval_seconds,
                            region=REGION,
                            rule_name=f"aleph-{name}-{index}",
                        )
                    )

    def _start_source(self, source: Any) -> None:
        source.start()
        self._sources.append(source)

    def _stack_info(self) -> dict[str, Any]:
        r, api = _need(self.resources), _need(self.api)
        return {
            "s3_endpoint": self.moto_url,
            "endpoint_url": self.moto_url,
            "region": REGION,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "input_bucket": r.names.input_bucket,
            "input_prefix": r.input_prefix,
            "output_bucket": r.names.output_bucket,
            "jobs_table": r.names.jobs_table,
            "api_url": api.url,
            "simulator_url": self.simulator_url,
            "submit_queue_url": r.submit_queue_url,
            "submit_dlq_url": r.submit_dlq_url,
            "finalize_dlq_url": r.finalize_dlq_url,
            "notify_dlq_url": r.notify_dlq_url,
            "undelivered_events_url": r.undelivered_events_url,
            "event_bus_name": r.event_bus_name,
            "secret_id": r.names.secret_id,
            "functions": {name: str(f.handler_file) for name, f in self.functions.items()},
            "handler_env": dict(self._env),
            "template": str(self.config.source) if self.config and self.config.source else None,
            "logs": {name: str(self.workdir / f"{name}.log") for name, _ in self._processes},
            "pid": os.getpid(),
            "aws_faults_report": str(self.aws_faults_report) if self.aws_faults is not None else None,
        }


# ------------------------------------------------------------------------ subprocess helpers


def _need(value: _T | None) -> _T:
    if value is None:
        raise RuntimeError("the local stack is not started")
    return value


class ChildExited(RuntimeError):
    """A subprocess of the stack exited while it was expected to run."""


def _process_alive(process: subprocess.Popen[bytes], what: str) -> bool:
    if process.poll() is not None:
        raise ChildExited(f"{what} exited with code {process.returncode} (see its log in the workdir)")
    return True


def _stop_process(name: str, process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(SUBPROCESS_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop on SIGTERM: killing it", name)
            process.kill()
            process.wait(SUBPROCESS_STOP_TIMEOUT)


def _can_die_with_parent() -> bool:
    return sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the stack dies without cleaning up (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _env_port(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a port number, got {value!r}") from None


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------- tests: one subprocess


def spawn(
    workdir: str | Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start ``python -m local.stack --workdir WORKDIR *args`` and wait for its ``stack.json``.

    The stack's output goes to ``WORKDIR/stack.log``. Returns the process and the stack info;
    stop it with ``terminate(process)``. Raises (after stopping it) if it does not come up.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    info_path = stack_json_path(workdir)
    with contextlib.suppress(FileNotFoundError):
        info_path.unlink()
    child_env = dict(os.environ if env is None else env)
    paths = [str(REPO_ROOT), *(str(p) for p in LAYER_PATHS), child_env.get("PYTHONPATH", "")]
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    child_env["PYTHONUNBUFFERED"] = "1"
    log_path = workdir / "stack.log"
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "local.stack", "--workdir", str(workdir), *args],
            cwd=REPO_ROOT,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if _can_die_with_parent() else None,  # noqa: PLW1509
        )

    def started() -> dict[str, Any] | None:
        if process.poll() is not None:
            raise ChildExited(f"the local stack exited with code {process.returncode}:\n{_tail(log_path)}")
        if not info_path.is_file():
            return None
        info = json.loads(info_path.read_text(encoding="utf-8"))
        return info if isinstance(info, dict) and info.get("pid") == process.pid else None

    try:
        info = wait_for(started, timeout=timeout, interval=0.05, message=f"{info_path}")
    except BaseException:
        terminate(process)
        raise
    return process, info


def terminate(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM the stack and wait for it (SIGKILL after ``timeout``); return its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    return int(process.returncode)


@contextlib.contextmanager
def spawned(workdir: str | Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0) -> Iterator[dict[str, Any]]:
    """``with spawned(tmp_path) as info: ...``: a stack subprocess for the block's duration."""
    process, info = spawn(workdir, *args, env=env, timeout=timeout)
    try:
        yield info
    finally:
        terminate(process)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ------------------------------------------------------------------------------------ CLI


def _banner(stack: LocalStack) -> str:
    info = stack.info
    endpoint = info["s3_endpoint"]
    simulator = info["simulator_url"] or "(disabled: provider calls fail fast)"
    lines = [
        "",
        "aleph local stack is running",
        f"  S3 / SQS / DynamoDB (moto)  {endpoint}   region {info['region']}, credentials testing/testing",
        f"  callback API                {info['api_url']}",
        f"  provider simulator          {simulator}",
        f"  input                       s3://{info['input_bucket']}/{info['input_prefix']}",
        f"  output                      s3://{info['output_bucket']}/",
        f"  jobs table                  {info['jobs_table']}",
        f"  stack info                  {stack.stack_json}",
        f"  logs                        handlers: here; moto and simulator: {stack.workdir}/*.log",
        "",
        "Use it with the AWS CLI:",
        "  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1",
        f"  aws --endpoint-url {endpoint} s3 cp clip.mp4 s3://{info['input_bucket']}/{info['input_prefix']}",
        f"  aws --endpoint-url {endpoint} s3 cp clip.json s3://{info['input_bucket']}/{info['input_prefix']}",
        f"  aws --endpoint-url {endpoint} dynamodb scan --table-name {info['jobs_table']}",
        f"  aws --endpoint-url {endpoint} s3 ls --recursive s3://{info['output_bucket']}/",
        "",
        "Ctrl-C stops it.",
        "",
    ]
    return "\n".join(lines)


def _handler_arg(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError("expected NAME=PATH, e.g. submit=tests/fakes/submit.py")
    return name, Path(path)


def _env_arg(value: str) -> tuple[str, str]:
    name, sep, setting = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    return name, setting


def _aws_faults_arg(value: str) -> FaultConfig:
    try:
        return parse_config(value)
    except AwsFaultsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m local.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"where {STACK_JSON} and the logs go (default: .local/)")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE, help="the SAM template to read")
    parser.add_argument("--no-simulator", action="store_true", help="do not start the provider simulator")
    parser.add_argument("--simulator-url", help="use a simulator already running at this URL")
    parser.add_argument(
        "--handler", action="append", type=_handler_arg, default=[], metavar="NAME=PATH", help="use this handler file for a function (repeatable)"
    )
    parser.add_argument("--sqs-concurrency", type=int, default=4, help="SQS batches in parallel (default 4)")
    parser.add_argument(
        "--sqs-time-scale",
        type=float,
        default=None,
        help="scale each queue's VisibilityTimeout from the template, e.g. 0.01: 720 s -> 7 s (default $ALEPH_SQS_TIME_SCALE or 1)",
    )
    parser.add_argument("--stream-retry-backoff", type=float, default=0.2, help="first stream retry delay in seconds, doubling up to 2 s (default 0.2)")
    parser.add_argument("--stream-max-retries", type=int, default=None, help="override the template's MaximumRetryAttempts")
    parser.add_argument("--schedule-interval", type=float, default=None, help="run scheduled functions every N seconds instead of the template's rate")
    parser.add_argument("--env", action="append", type=_env_arg, default=[], metavar="NAME=VALUE", help="set a handler environment variable (repeatable)")
    parser.add_argument(
        "--aws-faults",
        type=_aws_faults_arg,
        default=None,
        metavar="JSON",
        help='AWS-side faults for the handlers\' calls, e.g. \'{"seed": 7, "rules": [{"fault": "s3_slowdown", "rate": 0.05}]}\' (see local/aws_faults.py)',
    )
    parser.add_argument("--quiet", action="store_true", help="no banner, warnings and errors only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The stack's own lines at INFO; libraries (and the handlers' plain loggers) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("local").setLevel(logging.WARNING if args.quiet else logging.INFO)
    stop_event = threading.Event()
    running = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_event.set()
        if not running:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack = LocalStack(
        args.workdir,
        simulator=not args.no_simulator,
        simulator_url=args.simulator_url,
        handlers=dict(args.handler),
        template=args.template,
        sqs_concurrency=args.sqs_concurrency,
        sqs_time_scale=args.sqs_time_scale,
        stream_retry_backoff=args.stream_retry_backoff,
        stream_max_retries=args.stream_max_retries,
        schedule_interval=args.schedule_interval,
        handler_env=dict(args.env),
        aws_faults=args.aws_faults,
    )
    try:
        stack.start()
        running = True
        if not args.quiet:
            print(_banner(stack), flush=True)
        if not stack.wait(stop_event):
            return 1
    except KeyboardInterrupt:
        pass
    except Exception:
        log.exception("the local stack failed")
        return 1
    finally:
        running = True  # a second signal during shutdown only sets the event
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
