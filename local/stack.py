"""The local stack: moto server + the provider simulator + the handlers, fed like on AWS.

``python -m local.stack`` (what ``make local`` runs) starts moto server and the simulator as
subprocesses on 127.0.0.1, provisions the contract's resources with the template's settings,
runs the handlers (``functions/<name>/app.py``) in processes of their own, one per sandbox
(``local.lambda_runtime``), and runs the event sources: every function's SQS queue (submit,
notify, poll), the jobs table's stream -> finalize and notify, an HTTP API v2 emulator ->
callback and status (and any Schedule event of the template). It writes
``.local/stack.json`` and runs until SIGINT/SIGTERM.

Each sandbox of a function runs in a process of its own (``local.lambda_runtime``) whose environment is
exactly what its template entry gives it (Globals and its own ``Environment``) with local values,
the Lambda runtime's variables, and the local-only settings: ``AWS_ENDPOINT_URL``,
``PROVIDER_ENDPOINTS``, ``RESULT_HOSTS``, ``ALLOW_HTTP_RESULT_URLS``, and ``CALLBACK_API_URL`` for the
functions whose entry defines it. ``--env NAME=VALUE`` (``handler_env=``) adds to every function's.
``--parameter NAME=VALUE`` (``parameters=``) gives a template parameter a value other than its
default, as ``sam deploy --parameter-overrides`` does (e.g. ``InputCleanup=delete``).

``--aws-faults JSON`` (or ``aws_faults=``) makes AWS fail the handlers' calls at a seeded rate
and cuts invocations off, as described in ``local.aws_faults``; what was injected goes to
``<workdir>/aws-faults.json``. Without it nothing is injected.

``<workdir>/env-reads.json`` lists, by function, the domain's settings a handler read whose
variable its environment lacks (the default was used); ``wiring`` marks a resource name or URL,
which the template must give. ``--strict-env`` fails such a read, naming function and variable.
``--record-aws-calls`` writes every AWS API call a handler makes to ``<workdir>/aws-calls.jsonl``
(``stack.json``: ``aws_calls_log``), one JSON object a line with the resource-naming parameters.

``--provider-url URL --provider-keys FILE`` (or ``ALEPH_PROVIDER_URL``/``ALEPH_PROVIDER_KEYS``)
points every provider at ``URL/<provider>`` instead of the stack's own simulator (not started),
with the keys file's JSON object (keyed by provider id) as the provider-keys secret.

Tests start the stack as a subprocess with ``spawn()`` (or ``spawned()``) and stop it with
``terminate()``.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from local.apigw import HttpApiEmulator, Route
from local.aws_faults import AwsFaultsError, FaultConfig, ReportWriter, parse_config
from local.client import DEFAULT_WORKDIR, REPO_ROOT, STACK_JSON, answers, aws_client, free_port, stack_json_path, wait_for
from local.dispatcher import ScheduleEventSource, SqsEventSource, StreamEventSource
from local.lambda_runtime import LAYER_PATHS, LOCAL_ACCOUNT_ID, LambdaFunction, merge_fault_reports
from local.provision import ResourceNames, Resources, provision
from local.template_config import SqsSourceConfig, TemplateConfig, load_template_config

log = logging.getLogger("local.stack")
_T = TypeVar("_T")

REGION = "us-east-1"
LOCAL_PROVIDERS = ("kie", "apikley", "runware", "crun", "replicate", "runway")
DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"
UNREACHABLE_PROVIDER_URL = "http://127.0.0.1:9"  # the discard port: refused at once
STARTUP_TIMEOUT = 30.0
SUBPROCESS_STOP_TIMEOUT = 10.0
THREAD_JOIN_TIMEOUT = 10.0

# Set by the local stack whatever the template says (local configuration, not code paths).
_LOCAL_ONLY = ("CALLBACK_API_URL", "PROVIDER_ENDPOINTS", "RESULT_HOSTS", "ALLOW_HTTP_RESULT_URLS")
# When there is no template: the contract's variables, given to every function.
_CONTRACT_ENVIRONMENT = {
    "INPUT_PREFIX": "incoming/",
    "DEFAULT_PROVIDER": "kie",
    "PRESIGNED_URL_TTL_SECONDS": "3600",
    "PAIRING_TIMEOUT_SECONDS": "3600",
    "JOB_DEADLINE_SECONDS": "86400",
    "MAX_RESULT_BYTES": "2147483648",
    "POWERTOOLS_SERVICE_NAME": "aleph-pipeline",
    "POWERTOOLS_METRICS_NAMESPACE": "AlephPipeline",
}
ENV_READS_FILE = "env-reads.json"
AWS_CALLS_FILE = "aws-calls.jsonl"
PROVIDER_URL_ENV, PROVIDER_KEYS_ENV = "ALEPH_PROVIDER_URL", "ALEPH_PROVIDER_KEYS"


class ProviderKeysError(ValueError):
    """The provider keys file is missing or not a JSON object of keys by provider id (never shows a key)."""


def load_provider_keys(path: Path) -> dict[str, Any]:
    """The keys file's object, keyed by provider id; ProviderKeysError says what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProviderKeysError(f"provider keys file {path}: cannot be read ({exc.strerror or exc})") from None
    try:
        keys = json.loads(text)
    except json.JSONDecodeError as exc:
        # The position only: the parser's message could quote the file's text.
        raise ProviderKeysError(f"provider keys file {path}: not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(keys, dict) or not keys:
        raise ProviderKeysError(f'provider keys file {path}: expected a JSON object keyed by provider id, like {{"kie": "<key>"}}, got a {type(keys).__name__}')
    unknown = sorted(set(keys) - set(LOCAL_PROVIDERS))
    if unknown:
        raise ProviderKeysError(f"provider keys file {path}: unknown provider id(s) {', '.join(map(repr, unknown))} (known: {', '.join(LOCAL_PROVIDERS)})")
    empty = sorted(name for name, key in keys.items() if key in (None, "", {}, []))
    if empty:
        raise ProviderKeysError(f"provider keys file {path}: no key for {', '.join(empty)}")
    return keys


def provider_base_url(url: str) -> str:
    """``url`` without a trailing slash, if it is an http(s) URL with a host."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"provider URL must be http(s)://host[:port][/path], got {url.strip()[:200]!r}")
    return url.strip().rstrip("/")


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
        record_aws_calls: bool = False,
        strict_env: bool = False,
        provider_url: str | None = None,
        provider_keys: str | Path | None = None,
        parameters: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir) if workdir else DEFAULT_WORKDIR
        self.moto_port = moto_port if moto_port is not None else _env_port("ALEPH_MOTO_PORT")
        self.api_port = api_port if api_port is not None else _env_port("ALEPH_API_PORT")
        self.simulator_port = simulator_port if simulator_port is not None else _env_port("ALEPH_SIMULATOR_PORT")
        # Another provider implementation: every provider at <url>/<provider>, with these keys.
        self.provider_url = provider_base_url(provider_url) if provider_url else None
        if (provider_url is None) != (provider_keys is None):
            raise ProviderKeysError("a provider URL and a provider keys file go together (--provider-url and --provider-keys)")
        self.provider_keys = load_provider_keys(Path(provider_keys)) if provider_keys is not None else None
        self.simulator_enabled = simulator and simulator_url is None and self.provider_url is None
        self.simulator_url: str | None = simulator_url.rstrip("/") if simulator_url else None
        self.handler_overrides = {k: Path(v) for k, v in (handlers or {}).items()}
        # Settings a test or a user changes for the handlers (e.g. shorter grace periods).
        self.handler_env_overrides = dict(handler_env or {})
        # Template parameters given other values than their defaults (sam deploy's overrides).
        self.parameter_overrides = dict(parameters or {})
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
        self.record_aws_calls = record_aws_calls
        self.strict_env = strict_env

        self.config: TemplateConfig | None = None
        self.resources: Resources | None = None
        self.functions: dict[str, LambdaFunction] = {}
        self.moto_url: str | None = None
        self.api: HttpApiEmulator | None = None
        self.warnings: list[str] = []
        self._function_envs: dict[str, dict[str, str]] = {}
        self._info: dict[str, Any] | None = None
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._log_files: list[Any] = []
        self._sources: list[_Stoppable] = []
        self._reports: list[ReportWriter] = []
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
        """Every function's environment in one (after ``start()``; each function gets its own)."""
        if not self._function_envs:
            raise RuntimeError("the stack is not started")
        return {name: value for env in self._function_envs.values() for name, value in env.items()}

    def function_env(self, function: str) -> dict[str, str]:
        """What the stack gives ``function`` on top of the Lambda runtime's variables."""
        return dict(self._function_envs[function])

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
        # The functions' processes stop in parallel (each sends its final counts first).
        closing = [threading.Thread(target=f.close, name=f"close-{f.name}", daemon=True) for f in self.functions.values()]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join(THREAD_JOIN_TIMEOUT)
        for report in self._reports:
            report.stop()
            report.join(THREAD_JOIN_TIMEOUT)  # writes the final counts
        self._reports.clear()
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
        unknown = sorted(set(self.parameter_overrides) - set(self.config.parameters))
        if unknown:
            raise ValueError(f"the template has no parameter {', '.join(unknown)} (it has {', '.join(sorted(self.config.parameters))})")
        self.config.parameters.update(self.parameter_overrides)

        self.moto_url = self._start_moto()
        if self.simulator_enabled:
            self.simulator_url = self._start_simulator()

        def client(service: str) -> Any:
            return aws_client(service, endpoint_url=self.moto_url, region=REGION)

        self.resources = provision(client, self.config, region=REGION, names=ResourceNames(), secret_value=self.provider_keys)

        # Every function's HttpApi routes, each to its own function, with its authorizer (AWS_IAM: SigV4 only).
        routes = [Route(r.method, r.path, f.name, r.authorizer) for f in self.config.functions.values() for r in f.routes]
        self.api = HttpApiEmulator(routes, None, port=self.api_port or 0)

        self._function_envs = self._handler_environments()
        self._check_aws_faults()
        self._build_functions()
        self._start_reports()
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

    def _handler_environments(self) -> dict[str, dict[str, str]]:
        """Each function's own environment: its template entry resolved with local values, and the
        local-only settings (``CALLBACK_API_URL`` only where the entry defines it)."""
        config, resources, api = _need(self.config), _need(self.resources), _need(self.api)
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
        if self.provider_url is not None:
            base, result_host = self.provider_url, urlsplit(self.provider_url).hostname or ""
        else:
            base, result_host = self.simulator_url or UNREACHABLE_PROVIDER_URL, "127.0.0.1"
        local_only = {
            "PROVIDER_ENDPOINTS": json.dumps({p: f"{base}/{p}" for p in LOCAL_PROVIDERS}),
            "RESULT_HOSTS": json.dumps({p: [result_host] for p in LOCAL_PROVIDERS}),
            "ALLOW_HTTP_RESULT_URLS": "true",
            "AWS_ENDPOINT_URL": str(self.moto_url),
        }
        contract = {
            # No template: the contract's table, with the local values, for every function.
            "JOBS_TABLE_NAME": resources.names.jobs_table,
            "INPUT_BUCKET_NAME": resources.names.input_bucket,
            "OUTPUT_BUCKET_NAME": resources.names.output_bucket,
            "PROVIDER_SECRET_ID": resources.names.secret_id,
            "CALLBACK_API_URL": api.url,
            **_CONTRACT_ENVIRONMENT,
            "INPUT_PREFIX": resources.input_prefix,
        }
        environments: dict[str, dict[str, str]] = {}
        for function in config.functions:
            if config.source is None:
                env = dict(contract)
            else:
                env, problems = config.resolve_environment(function, refs)
                self.warnings.extend(message for name, message in problems.items() if name not in _LOCAL_ONLY)
                if "CALLBACK_API_URL" in problems or "CALLBACK_API_URL" in env:
                    env["CALLBACK_API_URL"] = api.url
            env.update(local_only)
            env.update(self.handler_env_overrides)
            environments[function] = env
        return environments

    @property
    def aws_faults_report(self) -> Path:
        return self.workdir / "aws-faults.json"

    @property
    def env_reads_report(self) -> Path:
        return self.workdir / ENV_READS_FILE

    @property
    def aws_calls_log(self) -> Path:
        return self.workdir / AWS_CALLS_FILE

    def _check_aws_faults(self) -> None:
        if self.aws_faults is None:
            return
        unknown = sorted(self.aws_faults.functions - set(_need(self.config).functions))
        if unknown:
            known = ", ".join(sorted(_need(self.config).functions))
            raise AwsFaultsError(f"aws-faults: rules name unknown function(s) {', '.join(unknown)} (the stack runs: {known})")
        log.info("aws-faults: seed %s, %d rule(s); counts in %s", self.aws_faults.seed, len(self.aws_faults.rules), self.aws_faults_report)

    def fault_report(self) -> dict[str, Any] | None:
        """The AWS faults injected so far, every function's added up (``aws-faults.json``)."""
        if self.aws_faults is None:
            return None
        return merge_fault_reports(self.aws_faults, [f.fault_report() for f in self.functions.values()])

    def env_reads(self) -> dict[str, Any]:
        """By function, the settings read with no variable set (``env-reads.json``)."""
        return {"strict": self.strict_env, "functions": {name: f.env_reads() for name, f in self.functions.items()}}

    def _start_reports(self) -> None:
        reports: list[tuple[Callable[[], Mapping[str, Any] | None], Path]] = [(self.env_reads, self.env_reads_report)]
        if self.aws_faults is not None:
            reports.append((self.fault_report, self.aws_faults_report))
        for report, path in reports:
            writer = ReportWriter(report, path)
            writer.start()
            self._reports.append(writer)

    def _build_functions(self) -> None:
        lanes, api = self.stream_lanes, self.api_concurrency
        concurrency = {"submit": self.sqs_concurrency, "poll": self.sqs_concurrency, "finalize": lanes, "notify": lanes, "callback": api, "status": api}
        # Each SQS event source scales on its own (submit: the S3 notifications and the jobs
        # waiting for a slot), so one source's backlog never takes the other's sandboxes.
        for name, spec in _need(self.config).functions.items():
            if len(spec.sqs_sources) > 1:
                concurrency[name] = self.sqs_concurrency * len(spec.sqs_sources)
        if self.record_aws_calls:
            self.aws_calls_log.write_bytes(b"")
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
                environment=self._function_envs[name],
                layer_paths=LAYER_PATHS,
                aws_faults=self.aws_faults,
                record_aws_calls=self.aws_calls_log if self.record_aws_calls else None,
                strict_env=self.strict_env,
            )
            if not function.exists():
                self.warnings.append(f"{name}: handler {path} not found: its events are not delivered")
                continue
            function.start()  # every function's process starts at once; the cold starts overlap
            self.functions[name] = function
        for function in self.functions.values():
            function.warm()  # the cold start: import errors show now, with their traceback

    def _start_sources(self, client: Any) -> None:
        config, resources = _need(self.config), _need(self.resources)
        # Each SQS event of each function, as an event source mapping on the queue the template
        # names (submit: SubmitQueue and PaceQueue, notify: UndeliveredJobEventQueue, poll:
        # PollQueue). Without a template, the contract's submit queue.
        queues = resources.queues()
        roles = {config.logical_id(role): role for role in queues}
        for name, spec in config.functions.items():
            if name not in self.functions:
                continue
            for source in spec.sqs_sources:
                self._start_sqs_source(client, name, source, roles, queues)
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

    def _start_sqs_source(self, client: Any, name: str, source: SqsSourceConfig, roles: dict[str | None, str], queues: dict[str, tuple[str, str]]) -> None:
        """One SQS event source mapping: ``source`` of function ``name``."""
        config = _need(self.config)
        visibility: Any
        if source.queue_ref:
            role = roles.get(source.queue_ref)
            visibility = (config.resources.get(source.queue_ref, {}).get("Properties") or {}).get("VisibilityTimeout")
        else:  # no template, or no SQS event in it: the contract's submit queue
            role = "submit_queue" if name == "submit" else None
            visibility = config.submit_queue.visibility_timeout
        queue_url, queue_arn = queues.get(role or "", ("", ""))
        if not queue_url:
            self.warnings.append(f"{name}: the queue of its SQS event ({source.queue_ref}) is not provisioned locally: its messages are not delivered")
            return
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
        # The template's MaximumConcurrency, at most the stack's --sqs-concurrency.
        concurrency = min(source.maximum_concurrency, self.sqs_concurrency)
        self._start_source(
            SqsEventSource(
                self.functions[name],
                queue_url=queue_url,
                queue_arn=queue_arn,
                region=REGION,
                client_factory=client,
                batch_size=source.batch_size,
                report_batch_item_failures=source.report_batch_item_failures,
                concurrency=concurrency,
                wait_seconds=self.sqs_wait_seconds,
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
            "pace_queue_url": r.pace_queue_url,
            "submit_dlq_url": r.submit_dlq_url,
            "finalize_dlq_url": r.finalize_dlq_url,
            "notify_dlq_url": r.notify_dlq_url,
            "undelivered_events_url": r.undelivered_events_url,
            "poll_queue_url": r.poll_queue_url,
            "poll_dlq_url": r.poll_dlq_url,
            "event_bus_name": r.event_bus_name,
            "secret_id": r.names.secret_id,
            "functions": {name: str(f.handler_file) for name, f in self.functions.items()},
            # What every function gets in one, and each function's own (its process has only that).
            "handler_env": self.env,
            "function_env": {name: self.function_env(name) for name in self.functions},
            "template": str(self.config.source) if self.config and self.config.source else None,
            "parameter_overrides": self.parameter_overrides,
            "logs": {name: str(self.workdir / f"{name}.log") for name, _ in self._processes},
            "pid": os.getpid(),
            "aws_faults_report": str(self.aws_faults_report) if self.aws_faults is not None else None,
            "env_reads_report": str(self.env_reads_report),
            "aws_calls_log": str(self.aws_calls_log) if self.record_aws_calls else None,
            "provider_url": self.provider_url,
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
    if info.get("provider_url"):
        simulator = f"not started: every provider at {info['provider_url']}/<provider>, keys from the keys file"
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
        f"  logs                        handlers: here, each line tagged with its function; moto and simulator: {stack.workdir}/*.log",
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
        "--parameter",
        action="append",
        type=_env_arg,
        default=[],
        metavar="NAME=VALUE",
        help="give a template parameter a value other than its default, e.g. InputCleanup=delete (repeatable)",
    )
    parser.add_argument(
        "--aws-faults",
        type=_aws_faults_arg,
        default=None,
        metavar="JSON",
        help='AWS-side faults for the handlers\' calls, e.g. \'{"seed": 7, "rules": [{"fault": "s3_slowdown", "rate": 0.05}]}\' (see local/aws_faults.py)',
    )
    parser.add_argument(
        "--strict-env", action="store_true", help="fail an invocation that reads a resource name or URL its function's template entry does not define"
    )
    parser.add_argument("--record-aws-calls", action="store_true", help=f"write every AWS call a handler makes to <workdir>/{AWS_CALLS_FILE}")
    parser.add_argument(
        "--provider-url",
        default=os.environ.get(PROVIDER_URL_ENV) or None,
        metavar="URL",
        help=f"reach every provider at URL/<provider> instead of the stack's simulator (env {PROVIDER_URL_ENV}); needs --provider-keys",
    )
    parser.add_argument(
        "--provider-keys",
        type=Path,
        default=os.environ.get(PROVIDER_KEYS_ENV) or None,
        metavar="FILE",
        help=f'a JSON object of API keys by provider id, e.g. {{"kie": "..."}}, for --provider-url (env {PROVIDER_KEYS_ENV})',
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
    try:
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
            record_aws_calls=args.record_aws_calls,
            strict_env=args.strict_env,
            provider_url=args.provider_url,
            provider_keys=args.provider_keys,
            parameters=dict(args.parameter),
        )
    except ValueError as exc:  # a bad provider URL or keys file: the message names it, never a key
        log.error("%s", exc)
        return 2
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
