"""What the local stack reads from ``template.yaml``, so that it cannot drift from what AWS runs.

The event-source settings (batch sizes, the finalize filter, retries, routes, timeouts), the
watched prefix, the queue and table definitions and the functions' environment come from the
template. Every value has the contract's value as a fallback, used (with a warning) when the
template is missing or a value cannot be read from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONTRACT_FINALIZE_FILTER: dict[str, Any] = {
    "eventName": ["INSERT", "MODIFY"],
    "dynamodb": {"NewImage": {"status": {"S": ["SUCCEEDED"]}}},
}
CONTRACT_INPUT_PREFIX = "incoming/"
CONTRACT_CALLBACK_PATH = "/callbacks/{provider}/{jobId}"

_FALLBACK_TIMEOUTS = {"submit": 60, "callback": 20, "finalize": 900}
_FALLBACK_TIMEOUT = 60
_FALLBACK_MEMORY = 512


@dataclass(frozen=True)
class SqsSourceConfig:
    batch_size: int = 10
    report_batch_item_failures: bool = True
    maximum_concurrency: int = 5
    queue_ref: str | None = None  # logical id of the queue in the template


@dataclass(frozen=True)
class StreamSourceConfig:
    batch_size: int = 5
    filters: tuple[dict[str, Any], ...] = (CONTRACT_FINALIZE_FILTER,)
    report_batch_item_failures: bool = True
    bisect_on_error: bool = True
    maximum_retry_attempts: int = 10  # -1 means: until the record expires
    starting_position: str = "LATEST"
    on_failure_ref: str | None = None  # logical id of the on-failure queue in the template


@dataclass(frozen=True)
class HttpRouteConfig:
    method: str
    path: str
    payload_format_version: str = "2.0"
    authorizer: str | None = None  # "AWS_IAM" when the route asks for SigV4; None: open


@dataclass(frozen=True)
class ScheduleConfig:
    expression: str
    interval_seconds: float


@dataclass(frozen=True)
class QueueConfig:
    visibility_timeout: int = 360
    message_retention_period: int = 345600
    max_receive_count: int = 5


@dataclass(frozen=True)
class FunctionConfig:
    name: str  # the folder under functions/
    code_uri: str
    handler: str = "app.lambda_handler"
    timeout_seconds: int = _FALLBACK_TIMEOUT
    memory_mb: int = _FALLBACK_MEMORY
    sqs: SqsSourceConfig | None = None  # its first SQS event (submit: the S3 notifications)
    stream: StreamSourceConfig | None = None
    routes: tuple[HttpRouteConfig, ...] = ()
    # Every SQS event in the template's order (submit: also the jobs waiting for a slot); empty
    # for a function from the contract's fallback, whose one source is ``sqs``.
    sqs_events: tuple[SqsSourceConfig, ...] = ()
    schedules: tuple[ScheduleConfig, ...] = ()
    # The function's environment as the template writes it (Globals merged with its own), unresolved.
    environment: Mapping[str, Any] = field(default_factory=dict)

    @property
    def handler_file(self) -> str:
        """Path of the handler module relative to the repository root."""
        module = self.handler.rsplit(".", 1)[0].replace(".", "/")
        return f"{self.code_uri.rstrip('/')}/{module}.py"

    @property
    def handler_attr(self) -> str:
        return self.handler.rsplit(".", 1)[-1]

    @property
    def sqs_sources(self) -> tuple[SqsSourceConfig, ...]:
        """Each SQS event source mapping Lambda would make for this function."""
        return self.sqs_events or ((self.sqs,) if self.sqs is not None else ())


@dataclass
class TemplateConfig:
    source: Path | None
    input_prefix: str = CONTRACT_INPUT_PREFIX
    parameters: dict[str, str] = field(default_factory=dict)
    submit_queue: QueueConfig = field(default_factory=QueueConfig)
    jobs_table: dict[str, Any] | None = None  # AWS::DynamoDB::Table properties usable as API args
    input_bucket_versioning: bool = False
    functions: dict[str, FunctionConfig] = field(default_factory=dict)
    global_environment: dict[str, Any] = field(default_factory=dict)  # Globals.Function's
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def event_bus_name(self) -> str:
        """The bus job events go to (the ``EventBusName`` parameter's default)."""
        return self.parameters.get("EventBusName") or "default"

    def logical_id(self, kind: str) -> str | None:
        """Logical id of a contract resource found by its role (see ``_find_roles``)."""
        return _find_roles(self).get(kind)

    def queue(self, kind: str) -> QueueConfig | None:
        """The settings of the queue with role ``kind`` as the template gives them; None when the
        template has no such queue (a value it leaves out takes SQS's default)."""
        props = self.resources.get(self.logical_id(kind) or "", {}).get("Properties")
        if not isinstance(props, dict):
            return None
        redrive = props.get("RedrivePolicy") or {}
        return QueueConfig(
            visibility_timeout=_int(props.get("VisibilityTimeout"), self.parameters) or 30,
            message_retention_period=_int(props.get("MessageRetentionPeriod"), self.parameters) or 345600,
            max_receive_count=_int(redrive.get("maxReceiveCount"), self.parameters) or 0,
        )

    def resolve_environment(self, function: str, refs: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """One function's environment with ``!Ref``/``!Sub`` resolved against local values.

        Only what the template gives that function (Globals and its own ``Environment``), like
        Lambda. ``refs`` maps logical ids (and pseudo parameters like ``AWS::Region``) to local
        values; template parameters resolve to their defaults. Returns the values that could be
        resolved and, by variable name, a warning for each that could not.
        """
        spec = self.functions.get(function)
        raw = dict(spec.environment) if spec is not None else dict(self.global_environment)
        values: dict[str, str] = {}
        problems: dict[str, str] = {}
        for name, value in raw.items():
            resolved = _resolve(value, refs, self.parameters)
            if resolved is None:
                problems[name] = f"template sets {name} to {json.dumps(value)} for {function}, which the local stack cannot resolve"
            else:
                values[name] = resolved
        return values, problems


def fallback_functions() -> dict[str, FunctionConfig]:
    """The three functions and their event sources exactly as the contracts describe them."""
    return {
        "submit": FunctionConfig(name="submit", code_uri="functions/submit/", timeout_seconds=60, sqs=SqsSourceConfig()),
        "callback": FunctionConfig(
            name="callback",
            code_uri="functions/callback/",
            timeout_seconds=20,
            routes=(HttpRouteConfig("POST", CONTRACT_CALLBACK_PATH),),
        ),
        "finalize": FunctionConfig(name="finalize", code_uri="functions/finalize/", timeout_seconds=900, stream=StreamSourceConfig()),
    }


def load_template_config(path: Path | None) -> TemplateConfig:
    """Read ``path`` (a SAM template); fall back to the contract values when it is not usable."""
    if path is None or not path.is_file():
        config = TemplateConfig(source=None, functions=fallback_functions())
        config.warnings.append(f"{path or 'template.yaml'} not found: using the contract's values")
        return config
    from cfnlint.decode import decode

    template, matches = decode(str(path))
    if template is None:
        config = TemplateConfig(source=None, functions=fallback_functions())
        detail = "; ".join(str(m) for m in matches[:3])
        config.warnings.append(f"{path} could not be parsed ({detail}): using the contract's values")
        return config
    return _from_template(path, _plain(template))


def parse_rate(expression: str) -> float | None:
    """Seconds between runs of a ``rate(N unit)`` schedule; None for ``cron(...)`` and the rest."""
    match = re.fullmatch(r"\s*rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)\s*", expression)
    if match is None:
        return None
    unit = match.group(2).rstrip("s")
    return int(match.group(1)) * {"minute": 60, "hour": 3600, "day": 86400}[unit]


# ---------------------------------------------------------------------------------- internals


def _plain(node: Any) -> Any:
    """cfn-lint's node classes as plain dicts, lists and scalars."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def _getatt_target(value: Any) -> str | None:
    """Logical id named by ``!GetAtt X.Attr`` (either form) or ``!Ref X``."""
    if not isinstance(value, dict) or len(value) != 1:
        return None
    if "Ref" in value and isinstance(value["Ref"], str):
        return value["Ref"]
    target = value.get("Fn::GetAtt")
    if isinstance(target, list) and target and isinstance(target[0], str):
        return target[0]
    if isinstance(target, str):
        return target.split(".", 1)[0]
    return None


def _int(value: Any, parameters: Mapping[str, str]) -> int | None:
    resolved = _resolve(value, {}, parameters)
    try:
        return int(resolved) if resolved is not None else None
    except ValueError:
        return None


def _resolve(value: Any, refs: Mapping[str, str], parameters: Mapping[str, str]) -> str | None:
    """A template value as the string Lambda would see, or None if it cannot be resolved locally."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    if not isinstance(value, dict) or len(value) != 1:
        return None
    if "Ref" in value:
        name = value["Ref"]
        if name in refs:
            return refs[name]
        return parameters.get(name)
    if "Fn::Sub" in value:
        body = value["Fn::Sub"]
        local_vars: dict[str, str] = {}
        if isinstance(body, list) and len(body) == 2 and isinstance(body[1], dict):
            for key, sub_value in body[1].items():
                resolved = _resolve(sub_value, refs, parameters)
                if resolved is None:
                    return None
                local_vars[key] = resolved
            body = body[0]
        if not isinstance(body, str):
            return None
        missing = False

        def substitute(match: re.Match[str]) -> str:
            nonlocal missing
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            found = local_vars.get(name, refs.get(name, parameters.get(name)))
            if found is None:
                missing = True
                return ""
            return found

        result = re.sub(r"\$\{([^}]+)\}", substitute, body)
        return None if missing else result
    return None


def _find_roles(config: TemplateConfig) -> dict[str, str]:
    """Logical ids of the contract's resources, found by what they do rather than their names."""
    roles: dict[str, str] = {}
    resources = config.resources
    buckets = [lid for lid, r in resources.items() if r.get("Type") == "AWS::S3::Bucket"]
    for lid in buckets:
        if resources[lid].get("Properties", {}).get("NotificationConfiguration"):
            roles.setdefault("input_bucket", lid)
    others = [lid for lid in buckets if lid != roles.get("input_bucket")]
    if others:
        roles["output_bucket"] = next((lid for lid in others if "output" in lid.lower()), others[0])
    tables = [lid for lid, r in resources.items() if r.get("Type") == "AWS::DynamoDB::Table"]
    streamed = [lid for lid in tables if resources[lid].get("Properties", {}).get("StreamSpecification")]
    if streamed or tables:
        roles["jobs_table"] = (streamed or tables)[0]
    secrets = [lid for lid, r in resources.items() if r.get("Type") == "AWS::SecretsManager::Secret"]
    if secrets:
        roles["secret"] = secrets[0]
    apis = [lid for lid, r in resources.items() if r.get("Type") == "AWS::Serverless::HttpApi"]
    if apis:
        roles["http_api"] = apis[0]
    submit = config.functions.get("submit")
    if submit and submit.sqs and submit.sqs.queue_ref:
        roles["submit_queue"] = submit.sqs.queue_ref
        redrive = resources.get(submit.sqs.queue_ref, {}).get("Properties", {}).get("RedrivePolicy", {})
        dlq = _getatt_target(redrive.get("deadLetterTargetArn")) if isinstance(redrive, dict) else None
        if dlq:
            roles["submit_dlq"] = dlq
        # The submit function's other SQS event: the jobs waiting for a provider slot (PaceQueue).
        for source in submit.sqs_sources:
            if source.queue_ref and source.queue_ref != submit.sqs.queue_ref:
                roles.setdefault("pace_queue", source.queue_ref)
    finalize = config.functions.get("finalize")
    if finalize and finalize.stream and finalize.stream.on_failure_ref:
        roles["finalize_dlq"] = finalize.stream.on_failure_ref
    notify = config.functions.get("notify")
    if notify and notify.stream and notify.stream.on_failure_ref:
        roles["notify_dlq"] = notify.stream.on_failure_ref
    if notify and notify.sqs and notify.sqs.queue_ref:
        roles["undelivered_events"] = notify.sqs.queue_ref
    poll = config.functions.get("poll")
    if poll and poll.sqs and poll.sqs.queue_ref:
        roles["poll_queue"] = poll.sqs.queue_ref
        redrive = resources.get(poll.sqs.queue_ref, {}).get("Properties", {}).get("RedrivePolicy", {})
        poll_dlq = _getatt_target(redrive.get("deadLetterTargetArn")) if isinstance(redrive, dict) else None
        if poll_dlq:
            roles["poll_dlq"] = poll_dlq
    return roles


def _from_template(path: Path, template: dict[str, Any]) -> TemplateConfig:
    config = TemplateConfig(source=path)
    warn = config.warnings.append
    config.parameters = {
        name: _resolve(spec.get("Default"), {}, {}) or ""
        for name, spec in (template.get("Parameters") or {}).items()
        if isinstance(spec, dict) and "Default" in spec
    }
    config.resources = {lid: r for lid, r in (template.get("Resources") or {}).items() if isinstance(r, dict)}
    globals_fn = (template.get("Globals") or {}).get("Function") or {}
    config.global_environment = dict(((globals_fn.get("Environment") or {}).get("Variables")) or {})
    for lid, resource in config.resources.items():
        if resource.get("Type") == "AWS::Serverless::Function":
            function = _function_config(lid, resource.get("Properties") or {}, globals_fn, config)
            if function is not None:
                config.functions[function.name] = function

    for name, fallback in fallback_functions().items():
        if name not in config.functions:
            warn(f"no function with CodeUri {fallback.code_uri} in {path.name}: using the contract's settings")
            config.functions[name] = fallback
    if config.functions["submit"].sqs is None:
        warn("the submit function has no SQS event in the template: using the contract's settings")
        config.functions["submit"] = _with(config.functions["submit"], sqs=SqsSourceConfig())
    if config.functions["finalize"].stream is None:
        warn("the finalize function has no DynamoDB event in the template: using the contract's settings")
        config.functions["finalize"] = _with(config.functions["finalize"], stream=StreamSourceConfig())
    if not config.functions["callback"].routes:
        warn("the callback function has no HttpApi event in the template: using the contract's route")
        config.functions["callback"] = _with(config.functions["callback"], routes=(HttpRouteConfig("POST", CONTRACT_CALLBACK_PATH),))

    roles = _find_roles(config)
    _read_input_bucket(config, roles.get("input_bucket"))
    _read_submit_queue(config, roles.get("submit_queue"))
    _read_jobs_table(config, roles.get("jobs_table"))
    return config


def _function_config(lid: str, props: dict[str, Any], globals_fn: dict[str, Any], config: TemplateConfig) -> FunctionConfig | None:
    """A function of the template, named after its CodeUri folder; adds its environment to the config's."""
    code_uri = props.get("CodeUri")
    if not isinstance(code_uri, str):
        return None
    code_uri = code_uri.removeprefix("./").rstrip("/") + "/"
    name = code_uri.rstrip("/").rsplit("/", 1)[-1]
    environment = {**config.global_environment, **((props.get("Environment") or {}).get("Variables") or {})}
    params = config.parameters
    handler = props.get("Handler", globals_fn.get("Handler", "app.lambda_handler"))
    sqs_events: list[SqsSourceConfig] = []
    stream: StreamSourceConfig | None = None
    routes: list[HttpRouteConfig] = []
    schedules: list[ScheduleConfig] = []
    for event_id, event in (props.get("Events") or {}).items():
        kind = event.get("Type") if isinstance(event, dict) else None
        eprops = (event.get("Properties") or {}) if isinstance(event, dict) else {}
        if kind == "SQS":
            sqs_events.append(
                SqsSourceConfig(
                    batch_size=_int(eprops.get("BatchSize"), params) or 10,
                    report_batch_item_failures="ReportBatchItemFailures" in (eprops.get("FunctionResponseTypes") or []),
                    maximum_concurrency=_int((eprops.get("ScalingConfig") or {}).get("MaximumConcurrency"), params) or 1000,
                    queue_ref=_getatt_target(eprops.get("Queue")),
                )
            )
        elif kind == "DynamoDB":
            stream = _stream_config(lid, event_id, eprops, config)
        elif kind in ("HttpApi", "Api"):
            routes.append(
                HttpRouteConfig(
                    method=str(eprops.get("Method", "ANY")).upper(),
                    path=str(eprops.get("Path", "/")),
                    payload_format_version=str(eprops.get("PayloadFormatVersion", "2.0")),
                    authorizer=_route_authorizer(eprops.get("Auth")),
                )
            )
        elif kind in ("Schedule", "ScheduleV2"):
            expression = str(eprops.get("Schedule") or eprops.get("ScheduleExpression") or "")
            interval = parse_rate(expression)
            if interval is None:
                config.warnings.append(f"{lid}.{event_id}: schedule {expression!r} is not a rate(): run every 300 s locally")
                interval = 300.0
            schedules.append(ScheduleConfig(expression=expression, interval_seconds=interval))
    return FunctionConfig(
        name=name,
        code_uri=code_uri,
        handler=handler if isinstance(handler, str) else "app.lambda_handler",
        timeout_seconds=_int(props.get("Timeout", globals_fn.get("Timeout")), params) or _FALLBACK_TIMEOUTS.get(name, _FALLBACK_TIMEOUT),
        memory_mb=_int(props.get("MemorySize", globals_fn.get("MemorySize")), params) or _FALLBACK_MEMORY,
        sqs=sqs_events[0] if sqs_events else None,
        sqs_events=tuple(sqs_events),
        stream=stream,
        routes=tuple(routes),
        schedules=tuple(schedules),
        environment=environment,
    )


def _route_authorizer(auth: Any) -> str | None:
    """``AWS_IAM`` for a route whose ``Auth.Authorizer`` asks for it; None for an open route."""
    if isinstance(auth, dict) and isinstance(auth.get("Authorizer"), str) and auth["Authorizer"] != "NONE":
        return str(auth["Authorizer"])
    return None


def _with(function: FunctionConfig, **changes: Any) -> FunctionConfig:
    values = {f: getattr(function, f) for f in function.__dataclass_fields__}
    values.update(changes)
    return FunctionConfig(**values)


def _stream_config(lid: str, event_id: str, eprops: dict[str, Any], config: TemplateConfig) -> StreamSourceConfig:
    filters: list[dict[str, Any]] = []
    criteria = eprops.get("FilterCriteria") or {}
    for item in criteria.get("Filters") or []:
        pattern = item.get("Pattern") if isinstance(item, dict) else None
        if isinstance(pattern, str):
            try:
                loaded = json.loads(pattern)
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                filters.append(loaded)
                continue
        config.warnings.append(f"{lid}.{event_id}: a filter pattern is not a JSON string: using the contract's")
        filters = [CONTRACT_FINALIZE_FILTER]
        break
    if not criteria:
        filters = []
    elif not filters:
        filters = [CONTRACT_FINALIZE_FILTER]
    destination = ((eprops.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
    retries = _int(eprops.get("MaximumRetryAttempts"), config.parameters)
    return StreamSourceConfig(
        batch_size=_int(eprops.get("BatchSize"), config.parameters) or 100,
        filters=tuple(filters),
        report_batch_item_failures="ReportBatchItemFailures" in (eprops.get("FunctionResponseTypes") or []),
        bisect_on_error=eprops.get("BisectBatchOnFunctionError") in (True, "true", "True"),
        maximum_retry_attempts=-1 if retries is None else retries,
        starting_position=str(eprops.get("StartingPosition", "LATEST")),
        on_failure_ref=_getatt_target(destination),
    )


def _read_input_bucket(config: TemplateConfig, lid: str | None) -> None:
    props = config.resources.get(lid or "", {}).get("Properties") or {}
    if not props:
        config.warnings.append("no input bucket with a notification in the template: using the contract's prefix")
        return
    versioning = props.get("VersioningConfiguration") or {}
    config.input_bucket_versioning = versioning.get("Status") == "Enabled"
    for queue_config in (props.get("NotificationConfiguration") or {}).get("QueueConfigurations") or []:
        for rule in ((queue_config.get("Filter") or {}).get("S3Key") or {}).get("Rules") or []:
            if str(rule.get("Name", "")).lower() == "prefix":
                prefix = _resolve(rule.get("Value"), {}, config.parameters)
                if prefix is not None:
                    config.input_prefix = prefix
                    return
    config.warnings.append("the input bucket's notification has no readable prefix: using the contract's")


def _read_submit_queue(config: TemplateConfig, lid: str | None) -> None:
    props = config.resources.get(lid or "", {}).get("Properties") or {}
    if not props:
        config.warnings.append("submit queue not found in the template: using the contract's settings")
        return
    redrive = props.get("RedrivePolicy") or {}
    params = config.parameters
    config.submit_queue = QueueConfig(
        visibility_timeout=_int(props.get("VisibilityTimeout"), params) or 30,
        message_retention_period=_int(props.get("MessageRetentionPeriod"), params) or 345600,
        max_receive_count=_int(redrive.get("maxReceiveCount"), params) or 5,
    )


_TABLE_API_PROPERTIES = (
    "AttributeDefinitions",
    "KeySchema",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
    "BillingMode",
    "StreamSpecification",
    "TimeToLiveSpecification",
)


def _read_jobs_table(config: TemplateConfig, lid: str | None) -> None:
    props = config.resources.get(lid or "", {}).get("Properties") or {}
    if not props:
        config.warnings.append("jobs table not found in the template: using the contract's definition")
        return
    table = {k: props[k] for k in _TABLE_API_PROPERTIES if k in props}
    if _has_intrinsics(table):
        config.warnings.append("the jobs table definition uses intrinsic functions: using the contract's")
        return
    config.jobs_table = table


def _has_intrinsics(value: Any) -> bool:
    if isinstance(value, dict):
        if any(k == "Ref" or k.startswith("Fn::") for k in value):
            return True
        return any(_has_intrinsics(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_intrinsics(v) for v in value)
    return False
