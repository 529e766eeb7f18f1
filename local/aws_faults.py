"""AWS-side faults for the local stack: S3, DynamoDB and Secrets Manager errors, and killed handlers.

Real AWS fails now and then: S3 answers 500 InternalError or 503 SlowDown, DynamoDB throttles,
Secrets Manager has an internal error, and a Lambda invocation is cut off (a timeout, a crash)
at any point of its work. This module makes the local stack do the same, at a seeded rate, to
the calls the *handlers* make, and never to the stack's own plumbing (provisioning, the SQS and
stream pollers, a test's clients), so the harness stays reliable: each sandbox of a function
runs in a process of its own (``local.lambda_worker``), which installs an injector for that
function and sandbox; the stack's process installs none.

Usage::

    python -m local.stack --aws-faults '{"seed": 7, "rules": [
        {"fault": "s3_slowdown", "rate": 0.05},
        {"fault": "dynamodb_throttle", "rate": 0.05, "burst": 6},
        {"fault": "secrets_error", "rate": 0.2, "functions": ["finalize"]},
        {"fault": "kill", "rate": 0.01, "services": ["dynamodb", "http"]}]}'

or ``LocalStack(..., aws_faults={...})``. The stack writes ``<workdir>/aws-faults.json``
(``stack.json`` names it as ``aws_faults_report``) every few seconds and when it stops::

    {"seed": 7, "rules": [{"fault": "s3_slowdown", "rate": 0.05, "applied": 12, "eligible": 240}, ...]}

``applied`` counts the injected faults (every failed attempt), ``eligible`` the attempts the rule
was drawn for, added up over the functions' processes.

A rule: ``fault`` (below), ``rate`` (0 to 1, per HTTP attempt), and optionally ``services``
(botocore service names; for ``kill`` also ``http``, the handlers' own HTTP calls to providers
and result URLs), ``functions`` (the stack's function names, e.g. ``submit``; default all) and
``burst`` (once the rule hits, the next N attempts of the same invocation to that service fail
too; botocore retries a single error, so a burst longer than the client's retries is what makes
an error reach the domain code).

Faults:

- ``s3_500``: S3 answers 500 ``InternalError`` (S3's XML error body; HEAD gets no body, as from S3).
- ``s3_slowdown``: S3 answers 503 ``SlowDown``.
- ``dynamodb_throttle``: 400 ``ProvisionedThroughputExceededException`` or ``ThrottlingException``
  (DynamoDB's JSON body, with its ``x-amz-crc32``).
- ``dynamodb_500``: 500 ``InternalServerError``.
- ``secrets_error``: Secrets Manager 500 ``InternalServiceError`` or 400 ``ThrottlingException``.
- ``kill``: the invocation is cut off right after an AWS call (botocore ``after-call``) or a
  handler HTTP call (``httpx.Client.send``) returns, before the handler sees the answer. The
  runtime reports it like Lambda reports a timeout and ends the sandbox's process; the dead
  invocation's threads make no further AWS or HTTP call (cleanup code does not run on a killed
  Lambda either).

How: the error faults answer botocore's ``before-send`` event with a fabricated response in
the service's real error shape, so botocore parses and retries it exactly as a real one; every
botocore client created while the faults are installed gets the hooks (``Session.create_client``
is wrapped, which covers boto3's default session and Powertools' own sessions). Only threads
inside ``invocation()`` (set by ``local.lambda_worker`` around each handler call, and carried
into the thread pools the handler starts, e.g. s3transfer's) are faulted: a burst belongs to one
invocation; ``kill`` fires only in the invocation's own thread.

Not modelled: DynamoDB conditional-check races. A faithful race needs a second writer that
really changes the item between the handler's read and its conditional write, and the only
such writers are the pipeline's own handlers; a "harmless touch" cannot make a status
condition fail, and a fabricated ConditionalCheckFailedException without a changed item is not
what a race looks like. Duplicate events and the property test exercise the real races.
In each sandbox's process (one per concurrent invocation of a function, see
``local.lambda_runtime``) one random.Random, seeded from ``seed``, the function's name and the
sandbox's number (``rng_for``), draws every fault: the same seed and the same sequence of a
sandbox's calls give the same faults (which sandbox serves which invocation varies with load).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import logging
import random
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("local.aws_faults")

# fault name -> the botocore service it hits (None: any service, and "http")
FAULT_SERVICES: dict[str, str | None] = {
    "s3_500": "s3",
    "s3_slowdown": "s3",
    "dynamodb_throttle": "dynamodb",
    "dynamodb_500": "dynamodb",
    "secrets_error": "secretsmanager",
    "kill": None,
}
HTTP_SERVICE = "http"  # the handlers' own HTTP calls (httpx): providers, result downloads
_RULE_FIELDS = ("fault", "rate", "services", "functions", "burst")
REPORT_FILE = "aws-faults.json"


class AwsFaultsError(ValueError):
    """The --aws-faults configuration is invalid; the message names the field."""


class InvocationKilled(BaseException):
    """The invocation was cut off (like a Lambda timeout or crash).

    A BaseException, so no ``except Exception`` in the handler catches it; ``local.lambda_runtime``
    reports the invocation as failed and ends its sandbox's process.
    """


# --------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class FaultRule:
    fault: str
    rate: float
    services: frozenset[str] | None = None  # None: the fault's own service (kill: all)
    functions: frozenset[str] | None = None  # None: every function
    burst: int = 0

    def applies(self, service: str, function: str) -> bool:
        if self.functions is not None and function not in self.functions:
            return False
        own = FAULT_SERVICES[self.fault]
        if own is not None and service != own:
            return False
        return self.services is None or service in self.services

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fault": self.fault, "rate": self.rate}
        if self.services is not None:
            out["services"] = sorted(self.services)
        if self.functions is not None:
            out["functions"] = sorted(self.functions)
        if self.burst:
            out["burst"] = self.burst
        return out


@dataclass(frozen=True)
class FaultConfig:
    seed: int
    rules: tuple[FaultRule, ...]

    def to_json(self) -> dict[str, Any]:
        """The configuration as ``parse_config`` reads it."""
        return {"seed": self.seed, "rules": [rule.to_json() for rule in self.rules]}

    @property
    def functions(self) -> set[str]:
        """Every function name the rules restrict themselves to (for the stack to check)."""
        return {name for rule in self.rules for name in rule.functions or ()}


def parse_config(value: str | Mapping[str, Any]) -> FaultConfig:
    """The configuration from JSON text or a mapping; AwsFaultsError names any bad field."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise AwsFaultsError(f"aws-faults: not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise AwsFaultsError('aws-faults: expected a JSON object like {"seed": 7, "rules": [...]}')
    unknown = sorted(set(value) - {"seed", "rules"})
    if unknown:
        raise AwsFaultsError(f"aws-faults: unknown field(s) {', '.join(map(repr, unknown))} (allowed: seed, rules)")
    seed = value.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise AwsFaultsError(f"aws-faults: seed must be an integer, got {seed!r}")
    rules = value.get("rules", [])
    if not isinstance(rules, list):
        raise AwsFaultsError("aws-faults: rules must be a list of rules")
    return FaultConfig(seed=seed, rules=tuple(_parse_rule(rule, f"rules[{index}]") for index, rule in enumerate(rules)))


def _parse_rule(rule: Any, where: str) -> FaultRule:
    if not isinstance(rule, Mapping):
        raise AwsFaultsError(f"aws-faults: {where} must be an object with fault and rate")
    unknown = sorted(set(rule) - set(_RULE_FIELDS))
    if unknown:
        raise AwsFaultsError(f"aws-faults: {where}: unknown field(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(_RULE_FIELDS)})")
    fault = rule.get("fault")
    if fault not in FAULT_SERVICES:
        raise AwsFaultsError(f"aws-faults: {where}.fault: unknown fault {str(fault)[:40]!r} (known: {', '.join(FAULT_SERVICES)})")
    rate = rule.get("rate")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= float(rate) <= 1.0:
        raise AwsFaultsError(f"aws-faults: {where}.rate: must be a number from 0 to 1, got {str(rate)[:40]!r}")
    burst = rule.get("burst", 0)
    if not isinstance(burst, int) or isinstance(burst, bool) or burst < 0:
        raise AwsFaultsError(f"aws-faults: {where}.burst: must be a whole number >= 0, got {str(burst)[:40]!r}")
    if burst and fault == "kill":
        raise AwsFaultsError(f"aws-faults: {where}.burst: a kill ends the invocation, it has no burst")
    services = _names(rule, "services", where)
    own = FAULT_SERVICES[fault]
    if services is not None and own is not None and services != {own}:
        raise AwsFaultsError(f"aws-faults: {where}.services: {fault} only hits {own}, got {sorted(services)}")
    return FaultRule(fault=fault, rate=float(rate), services=services, functions=_names(rule, "functions", where), burst=burst)


def _names(rule: Mapping[str, Any], name: str, where: str) -> frozenset[str] | None:
    value = rule.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise AwsFaultsError(f"aws-faults: {where}.{name}: must be a non-empty list of names")
    return frozenset(value)


# ---------------------------------------------------------------------- invocation scope


@dataclass
class _Invocation:
    """One handler invocation: the thread it runs in, its bursts, whether it was killed."""

    function: str
    thread: threading.Thread
    bursts: dict[int, int] = field(default_factory=dict)  # rule index -> attempts left to fail
    killed: str | None = None  # what it was killed after
    lock: threading.Lock = field(default_factory=threading.Lock)


_local = threading.local()


class _Active:
    """The process's installed injector (one at a time)."""

    injector: FaultInjector | None = None


_ACTIVE = _Active()
_PATCH_LOCK = threading.Lock()


def _current() -> _Invocation | None:
    return getattr(_local, "invocation", None)


@contextlib.contextmanager
def _scope(invocation: _Invocation | None) -> Iterator[None]:
    previous = _current()
    _local.invocation = invocation
    try:
        yield
    finally:
        _local.invocation = previous


@contextlib.contextmanager
def invocation(function: str) -> Iterator[None]:
    """Mark the calls made inside as the handler ``function``'s (a no-op when nothing is installed)."""
    if _ACTIVE.injector is None:
        yield
        return
    with _scope(_Invocation(function=function, thread=threading.current_thread())):
        yield


# ---------------------------------------------------------------------------- injector


@dataclass
class _RuleState:
    rule: FaultRule
    applied: int = 0
    eligible: int = 0


def rng_for(seed: int, function: str | None, sandbox: int | None = None) -> random.Random:
    """The generator an injector draws from: seeded from the seed, the function's name and the
    sandbox's number, so each sandbox's faults repeat with the seed whatever the others do."""
    if function is None:
        return random.Random(seed)
    return random.Random(f"{seed}/{function}" if sandbox is None else f"{seed}/{function}/{sandbox}")


class FaultInjector:
    """One process's faults: a seeded random.Random, the rules and what they did.

    In the local stack, each sandbox's process has one (``function`` and ``sandbox`` name it:
    its generator is ``rng_for(seed, function, sandbox)``); the stack adds their reports up.
    """

    def __init__(self, config: FaultConfig, function: str | None = None, sandbox: int | None = None) -> None:
        self.config = config
        self.function = function
        self.sandbox = sandbox
        self._rng = rng_for(config.seed, function, sandbox)
        self._lock = threading.Lock()
        self._rules = [_RuleState(rule) for rule in config.rules]

    # -------------------------------------------------------------------- lifecycle

    def install(self) -> FaultInjector:
        """Make this the process's injector (one at a time) and hook botocore and httpx."""
        with _PATCH_LOCK:
            if _ACTIVE.injector is not None and _ACTIVE.injector is not self:
                raise RuntimeError("another FaultInjector is installed in this process")
            _patch()
            _ACTIVE.injector = self
        return self

    def uninstall(self) -> None:
        with _PATCH_LOCK:
            if _ACTIVE.injector is self:
                _ACTIVE.injector = None
                _unpatch()

    def __enter__(self) -> FaultInjector:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()

    def report(self) -> dict[str, Any]:
        with self._lock:
            rules = [{**state.rule.to_json(), "applied": state.applied, "eligible": state.eligible} for state in self._rules]
        return {"seed": self.config.seed, "rules": rules}

    # ------------------------------------------------------------------------ draws

    def error_for(self, invocation: _Invocation, service: str) -> str | None:
        """The error fault this attempt gets, if any (bursts first, then one draw per rule)."""
        with self._lock:
            for index, state in enumerate(self._rules):
                rule = state.rule
                if rule.fault == "kill" or not rule.applies(service, invocation.function):
                    continue
                left = invocation.bursts.get(index, 0)
                if left > 0:
                    invocation.bursts[index] = left - 1
                    state.applied += 1
                    return rule.fault
                state.eligible += 1
                if self._rng.random() < rule.rate:
                    state.applied += 1
                    invocation.bursts[index] = rule.burst
                    return rule.fault
        return None

    def choose(self, options: Sequence[Any]) -> Any:
        with self._lock:
            return options[self._rng.randrange(len(options))]

    def kill_after(self, invocation: _Invocation, service: str) -> bool:
        """Whether the invocation is cut off now, after a call to ``service`` returned."""
        with self._lock:
            for state in self._rules:
                rule = state.rule
                if rule.fault != "kill" or not rule.applies(service, invocation.function):
                    continue
                state.eligible += 1
                if self._rng.random() < rule.rate:
                    state.applied += 1
                    return True
        return False


# --------------------------------------------------------------------- error responses


class _Body:
    """The ``raw`` of a fabricated botocore AWSResponse."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data

    def read(self, *_: Any) -> bytes:
        data, self._data = self._data, b""
        return data

    def close(self) -> None:
        pass


def _s3_error(method: str, status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    request_id = uuid.uuid4().hex[:16].upper()
    host_id = uuid.uuid4().hex
    headers = {"x-amz-request-id": request_id, "x-amz-id-2": host_id, "Server": "AmazonS3", "Date": _http_date()}
    if method == "HEAD":  # S3 answers HEAD errors without a body
        return status, {**headers, "Content-Length": "0"}, b""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{request_id}</RequestId><HostId>{host_id}</HostId></Error>"
    ).encode()
    return status, {**headers, "Content-Type": "application/xml", "Content-Length": str(len(body))}, body


def _json_error(status: int, error_type: str, message: str, content_type: str, *, crc32: bool) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"__type": error_type, "message": message}, separators=(",", ":")).encode()
    headers = {"x-amzn-RequestId": uuid.uuid4().hex.upper(), "Content-Type": content_type, "Content-Length": str(len(body)), "Date": _http_date()}
    if crc32:
        headers["x-amz-crc32"] = str(zlib.crc32(body) & 0xFFFFFFFF)
    return status, headers, body


_DYNAMODB = "application/x-amz-json-1.0"
_DYNAMODB_PREFIX = "com.amazonaws.dynamodb.v20120810#"
_THROUGHPUT_MESSAGE = (
    "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API."
)


def _error_response(injector: FaultInjector, fault: str, method: str) -> tuple[int, dict[str, str], bytes]:
    if fault == "s3_500":
        return _s3_error(method, 500, "InternalError", "We encountered an internal error. Please try again.")
    if fault == "s3_slowdown":
        return _s3_error(method, 503, "SlowDown", "Please reduce your request rate.")
    if fault == "dynamodb_throttle":
        if injector.choose((True, False)):
            return _json_error(400, f"{_DYNAMODB_PREFIX}ProvisionedThroughputExceededException", _THROUGHPUT_MESSAGE, _DYNAMODB, crc32=True)
        return _json_error(400, "com.amazon.coral.availability#ThrottlingException", "Rate of requests exceeds the allowed throughput.", _DYNAMODB, crc32=True)
    if fault == "dynamodb_500":
        return _json_error(500, f"{_DYNAMODB_PREFIX}InternalServerError", "Internal server error", _DYNAMODB, crc32=True)
    if fault == "secrets_error":
        if injector.choose((True, False)):
            return _json_error(500, "InternalServiceError", "An error occurred on the server side.", "application/x-amz-json-1.1", crc32=False)
        return _json_error(400, "ThrottlingException", "Rate exceeded", "application/x-amz-json-1.1", crc32=False)
    raise AssertionError(f"no error response for {fault}")


def _http_date() -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())


# ------------------------------------------------------------------------------- hooks


def _dead(invocation: _Invocation, what: str) -> BaseException:
    """What a call of a killed invocation raises: it never reaches the network."""
    if threading.current_thread() is invocation.thread:
        return InvocationKilled(f"the invocation was cut off after {invocation.killed}; no {what} after that")
    return ConnectionAbortedError(f"the invocation this thread worked for was cut off after {invocation.killed}")


def _kill(invocation: _Invocation, what: str) -> None:
    invocation.killed = what
    log.warning("aws-faults: %s invocation cut off after %s", invocation.function, what)
    raise InvocationKilled(f"cut off after {what}")


def _before_send(service: str, request: Any = None, event_name: str = "", **_: Any) -> Any:
    injector, invocation = _ACTIVE.injector, _current()
    if injector is None or invocation is None:
        return None
    if invocation.killed:
        raise _dead(invocation, f"{service} call")
    fault = injector.error_for(invocation, service)
    if fault is None:
        return None
    from botocore.awsrequest import AWSResponse

    method = str(getattr(request, "method", "GET")).upper()
    status, headers, body = _error_response(injector, fault, method)
    log.info("aws-faults: %s gets %s %s on %s", invocation.function, fault, status, event_name.removeprefix("before-send."))
    return AWSResponse(getattr(request, "url", ""), status, headers, _Body(body))


def _after_call(service: str, event_name: str = "", **_: Any) -> None:
    injector, invocation = _ACTIVE.injector, _current()
    if injector is None or invocation is None or threading.current_thread() is not invocation.thread:
        return
    if injector.kill_after(invocation, service):
        _kill(invocation, f"{service}.{event_name.rsplit('.', 1)[-1]}")


def attach(client: Any) -> Any:
    """Register the hooks on one botocore client (done for every client created while installed)."""
    service = client.meta.service_model.service_name
    events = client.meta.events
    events.register("before-send", functools.partial(_before_send, service), unique_id="aleph-aws-faults-before-send")
    events.register("after-call", functools.partial(_after_call, service), unique_id="aleph-aws-faults-after-call")
    return client


_originals: dict[str, Any] = {}


def _patch() -> None:
    if _originals:
        return
    import botocore.session
    import httpx

    create_client = botocore.session.Session.create_client
    send = httpx.Client.send
    submit: Any = concurrent.futures.ThreadPoolExecutor.submit

    @functools.wraps(create_client)
    def create_client_with_faults(self: Any, *args: Any, **kwargs: Any) -> Any:
        return attach(create_client(self, *args, **kwargs))

    @functools.wraps(send)
    def send_with_faults(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        injector, invocation = _ACTIVE.injector, _current()
        if injector is None or invocation is None:
            return send(self, request, *args, **kwargs)
        if invocation.killed:
            raise _dead(invocation, "HTTP request")
        response = send(self, request, *args, **kwargs)
        if threading.current_thread() is invocation.thread and injector.kill_after(invocation, HTTP_SERVICE):
            response.close()
            _kill(invocation, f"HTTP {request.method} {request.url.host}:{request.url.port or ''}{request.url.path}")
        return response

    @functools.wraps(submit)
    def submit_in_scope(self: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        invocation = _current()
        if invocation is None:
            return submit(self, fn, *args, **kwargs)

        def run(*inner_args: Any, **inner_kwargs: Any) -> Any:
            with _scope(invocation):
                return fn(*inner_args, **inner_kwargs)

        return submit(self, run, *args, **kwargs)

    _originals.update(create_client=create_client, send=send, submit=submit)
    botocore.session.Session.create_client = create_client_with_faults
    httpx.Client.send = send_with_faults  # type: ignore[method-assign]
    concurrent.futures.ThreadPoolExecutor.submit = submit_in_scope  # type: ignore[method-assign]


def _unpatch() -> None:
    if not _originals:
        return
    import botocore.session
    import httpx

    botocore.session.Session.create_client = _originals["create_client"]
    httpx.Client.send = _originals["send"]  # type: ignore[method-assign]
    concurrent.futures.ThreadPoolExecutor.submit = _originals["submit"]  # type: ignore[method-assign]
    _originals.clear()


# ------------------------------------------------------------------------------ report


class ReportWriter:
    """Writes ``report()`` to ``path`` (as JSON, atomically) every ``interval`` seconds and once at ``stop()``."""

    def __init__(self, report: Callable[[], Mapping[str, Any] | None], path: Path, interval: float = 2.0) -> None:
        self.report = report
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"report-{path.stem}", daemon=True)

    def start(self) -> None:
        self._write()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> list[str]:
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._write()
        return [self._thread.name] if self._thread.is_alive() else []

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._write()

    def _write(self) -> None:
        report = self.report()
        if report is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("writing %s failed: %s", self.path, exc)
