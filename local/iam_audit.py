"""Least privilege, checked: every AWS call a function made against its role as SAM expands it.

The roles come from the SAM-expanded template (``tools/sam_expand.py``): each function's inline
statements (policy templates such as ``AWSSecretsManagerGetSecretValuePolicy`` already expanded,
and the statements SAM adds for event-source destinations) plus the AWS managed policies SAM
attaches (``MANAGED_POLICIES`` says what each grants). Their resources are resolved against the
local stack's names (``stack.json``). The calls come from ``aws-calls.jsonl``, one JSON object a
line: ``{"function", "service", "operation", "params", "presigned"}``.

The report lists the calls the role would deny (and calls this module cannot map to IAM actions),
and, over a whole run, the granted (action, resource) pairs no call used, unless ``UNUSED_ALLOWED``
gives the reason a path may go unexercised. Only Allow statements exist in our roles; there is no
Deny to evaluate.

    python -m local.iam_audit --stack-json .local/stack.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from local.template_config import load_template_config
from tools.sam_expand import code_folder, expand_template

PARTITION = "aws"
URL_SUFFIX = "amazonaws.com"
LOCAL_STACK_NAME = "aleph-local"
MOTO_ACCOUNT_ID = "123456789012"

# What the AWS managed policies SAM attaches grant (their published documents). They serve Lambda
# itself (logs, traces, event-source polling), so their grants are never reported as unused.
_LOGS = ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents")
MANAGED_POLICIES: dict[str, tuple[str, ...]] = {
    "AWSLambdaBasicExecutionRole": _LOGS,
    "AWSXrayWriteOnlyAccess": (
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "xray:GetSamplingRules",
        "xray:GetSamplingTargets",
        "xray:GetSamplingStatisticSummaries",
    ),
    "AWSLambdaDynamoDBExecutionRole": (
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
        *_LOGS,
    ),
    "AWSLambdaSQSQueueExecutionRole": ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", *_LOGS),
}

# Grants no call of a run may use, each with the reason it must stay: (function, action, resource
# label) -> why. A resource label names the template's resource: "OutputBucket/*", "JobsTable".
UNUSED_ALLOWED: dict[tuple[str, str, str], str] = {
    ("finalize", "sqs:SendMessage", "FinalizeDeadLetterQueue"): "Lambda's stream poller (not the code) sends a failed batch's metadata there",
    ("notify", "sqs:SendMessage", "NotifyDeadLetterQueue"): "Lambda's stream poller (not the code) sends a failed batch's metadata there",
    ("finalize", "s3:AbortMultipartUpload", "OutputBucket/*"): "a result copy that fails mid-way aborts its multipart upload",
    ("finalize", "s3:DeleteObject", "OutputBucket/*"): "a job failed after some results were copied has them deleted",
    ("finalize", "s3:ListBucket", "OutputBucket"): "a failed job's folder is listed before its partial results are deleted",
    ("reconcile", "s3:DeleteObject", "OutputBucket/*"): "the partial results of a SUCCEEDED job the reconciler fails are deleted",
    ("reconcile", "sqs:SendMessage", "PollQueue"): "intake run again by the reconciler for a job of a provider without webhooks starts its poll loop",
    ("reconcile", "sqs:SendMessage", "PaceQueue"): "intake run again by the reconciler for a job whose provider slot is still ahead requeues it there",
    ("reconcile", "s3:ListBucket", "OutputBucket"): "a SUCCEEDED job the reconciler fails has its folder listed before its partial results are deleted",
    ("reconcile", "sqs:ReceiveMessage", "SubmitDeadLetterQueue"): "uploads whose events failed every delivery are taken from the submit DLQ",
    ("reconcile", "sqs:DeleteMessage", "SubmitDeadLetterQueue"): "a dead-lettered upload taken by intake is deleted from the DLQ",
    ("reconcile", "s3:GetObject", "InputBucket/*"): "intake runs again for a job whose event was lost",
    ("reconcile", "s3:ListBucket", "InputBucket"): "intake runs again for a job whose event was lost",
    ("reconcile", "secretsmanager:GetSecretValue", "ProviderKeysSecret"): "overdue callbacks are confirmed by polling the provider",
    ("notify", "sqs:SendMessage*", "UndeliveredJobEventQueue"): "an event EventBridge refuses is kept there to be published again",
}


@dataclass(frozen=True)
class AwsCall:
    function: str
    service: str
    operation: str
    params: Mapping[str, Any] = field(default_factory=dict)
    presigned: bool = False

    def __str__(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.function}: {self.service}.{self.operation}({shown}){' presigned' if self.presigned else ''}"


@dataclass(frozen=True)
class Need:
    """One IAM action on one resource ARN that a call needs."""

    action: str
    resource: str


@dataclass(frozen=True)
class Grant:
    """One (action pattern, resource pattern) an Allow statement gives."""

    action: str
    resource: str  # resolved to local ARNs; IAM wildcards * and ?
    label: str  # the resource as the template names it (see UNUSED_ALLOWED)
    managed: str | None = None  # the AWS managed policy it comes from

    def allows(self, need: Need) -> bool:
        return _wildcard(self.action, need.action, ignore_case=True) and _wildcard(self.resource, need.resource, ignore_case=False)


@dataclass
class AuditReport:
    denied: list[tuple[AwsCall, Need]] = field(default_factory=list)
    unmapped: list[AwsCall] = field(default_factory=list)
    unknown_functions: list[str] = field(default_factory=list)
    unused: list[tuple[str, Grant]] = field(default_factory=list)
    unused_allowed: list[tuple[str, Grant, str]] = field(default_factory=list)
    calls: int = 0

    def failures(self) -> list[str]:
        lines = [f"denied: {call} needs {need.action} on {need.resource}" for call, need in self.denied]
        lines += [f"no IAM mapping for {call} (add it to local/iam_audit.py)" for call in self.unmapped]
        lines += [f"calls logged for {name}, which the template has no function for" for name in self.unknown_functions]
        lines += [f"unused grant: {function} may {grant.action} on {grant.label} ({grant.resource}) but no call used it" for function, grant in self.unused]
        return lines


# ------------------------------------------------------------------------------ roles


@dataclass(frozen=True)
class LocalResources:
    """What the template's references give in the local stack."""

    region: str
    account: str
    attributes: Mapping[str, Mapping[str, str]]  # logical id -> {"Ref": ..., "Arn": ..., ...}
    parameters: Mapping[str, str]

    @classmethod
    def from_stack_info(cls, info: Mapping[str, Any], template: Path) -> LocalResources:
        """From ``stack.json``; the logical ids are found the way the local stack found them."""
        config = load_template_config(template)
        region = str(info["region"])
        queue_url = str(info.get("submit_queue_url") or "")
        account = urlparse(queue_url).path.strip("/").split("/")[0] if queue_url else MOTO_ACCOUNT_ID
        attributes: dict[str, dict[str, str]] = {}

        def add(role: str, values: dict[str, str]) -> None:
            logical_id = config.logical_id(role)
            if logical_id is not None:
                attributes[logical_id] = values

        for role in ("input_bucket", "output_bucket"):
            name = str(info[role])
            add(role, {"Ref": name, "Arn": f"arn:{PARTITION}:s3:::{name}"})
        table = str(info["jobs_table"])
        table_arn = f"arn:{PARTITION}:dynamodb:{region}:{account}:table/{table}"
        add("jobs_table", {"Ref": table, "Arn": table_arn, "StreamArn": f"{table_arn}/stream/*"})
        for role, key in (
            ("submit_queue", "submit_queue_url"),
            ("submit_dlq", "submit_dlq_url"),
            ("finalize_dlq", "finalize_dlq_url"),
            ("notify_dlq", "notify_dlq_url"),
            ("undelivered_events", "undelivered_events_url"),
            ("poll_queue", "poll_queue_url"),
            ("poll_dlq", "poll_dlq_url"),
            ("pace_queue", "pace_queue_url"),
        ):
            if info.get(key):
                url = str(info[key])
                add(role, {"Ref": url, "Arn": queue_arn(url, region), "QueueName": url.rstrip("/").rsplit("/", 1)[-1]})
        add("secret", {"Ref": secret_arn(str(info["secret_id"]), region, account)})
        parameters = dict(config.parameters)
        parameters.update(info.get("parameter_overrides") or {})  # the local stack's --parameter values
        parameters["EventBusName"] = str(info.get("event_bus_name") or parameters.get("EventBusName") or "default")
        return cls(region=region, account=account, attributes=attributes, parameters=parameters)

    def pseudo(self) -> dict[str, str]:
        return {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::Partition": PARTITION,
            "AWS::URLSuffix": URL_SUFFIX,
            "AWS::StackName": LOCAL_STACK_NAME,
        }


def function_grants(expanded: Mapping[str, Any], local: LocalResources) -> dict[str, list[Grant]]:
    """Each function (by its code folder: ``submit``) and what its role allows."""
    resources: Mapping[str, Any] = expanded.get("Resources") or {}
    grants: dict[str, list[Grant]] = {}
    for resource in resources.values():
        if resource.get("Type") != "AWS::Lambda::Function":
            continue
        props = resource.get("Properties") or {}
        folder = code_folder(props.get("Code"))
        role_ref = props.get("Role")
        if folder is None or not (isinstance(role_ref, dict) and "Fn::GetAtt" in role_ref):
            continue
        role_id = role_ref["Fn::GetAtt"][0]
        role = resources[role_id]["Properties"]
        name = folder.rstrip("/").rsplit("/", 1)[-1]
        found: list[Grant] = []
        for arn in role.get("ManagedPolicyArns") or []:
            policy = str(arn).rsplit("/", 1)[-1]
            if policy not in MANAGED_POLICIES:
                raise ValueError(f"{name}'s role has managed policy {arn}: say what it grants in MANAGED_POLICIES")
            found += [Grant(action, "*", "*", managed=policy) for action in MANAGED_POLICIES[policy]]
        documents = [policy["PolicyDocument"] for policy in role.get("Policies") or []]
        # A parameter's own grants (InputCleanup's): a RolePolicy on the role, counted when its Condition holds.
        conditions: Mapping[str, Any] = expanded.get("Conditions") or {}
        for extra in resources.values():
            extra_props = extra.get("Properties") or {}
            if extra.get("Type") != "AWS::IAM::RolePolicy" or extra_props.get("RoleName") != {"Ref": role_id}:
                continue
            if "Condition" not in extra or _condition_holds(conditions[extra["Condition"]], conditions, local):
                documents.append(extra_props["PolicyDocument"])
        for document in documents:
            for statement in _listed(document["Statement"]):
                if statement.get("Effect") != "Allow" or "NotAction" in statement or "NotResource" in statement:
                    raise ValueError(f"{name}: only Allow statements with Action and Resource are audited, got {statement}")
                for expression in _listed(statement["Resource"]):
                    resolved = _resolve(expression, local)
                    found += [Grant(str(action), resolved, _label(expression)) for action in _listed(statement["Action"])]
        grants[name] = found
    return grants


def _condition_holds(expression: Any, conditions: Mapping[str, Any], local: LocalResources) -> bool:
    """A template Condition with the local stack's parameter values (Fn::Equals, Fn::Not, Condition)."""
    ((key, value),) = expression.items()
    if key == "Fn::Equals":
        left, right = (_resolve(side, local) for side in value)
        return left == right
    if key == "Fn::Not":
        return not _condition_holds(value[0], conditions, local)
    if key == "Condition":
        return _condition_holds(conditions[value], conditions, local)
    raise ValueError(f"cannot evaluate the condition {json.dumps(expression)} locally")


# ------------------------------------------------------------------------------ calls


def load_calls(path: Path) -> list[AwsCall]:
    calls: list[AwsCall] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            calls.append(AwsCall(str(raw["function"]), str(raw["service"]), str(raw["operation"]), dict(raw.get("params") or {}), bool(raw.get("presigned"))))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not an AWS call record ({exc})") from None
    return calls


_S3_OBJECT_ACTIONS = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListParts": "s3:ListMultipartUploadParts",
    "DeleteObject": "s3:DeleteObject",
}
_S3_BUCKET_ACTIONS = {"ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket", "HeadBucket": "s3:ListBucket"}
_DYNAMODB_ACTIONS = {"GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "DescribeTable", "ConditionCheckItem"}
_SQS_ACTIONS = {
    "SendMessage": "sqs:SendMessage",
    "SendMessageBatch": "sqs:SendMessage",
    "ReceiveMessage": "sqs:ReceiveMessage",
    "DeleteMessage": "sqs:DeleteMessage",
    "DeleteMessageBatch": "sqs:DeleteMessage",
    "ChangeMessageVisibility": "sqs:ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "GetQueueAttributes": "sqs:GetQueueAttributes",
}
# Calls no permission governs.
_NO_PERMISSION = {("sts", "GetCallerIdentity")}


def needs(call: AwsCall, local: LocalResources) -> list[Need] | None:
    """The IAM actions and resources ``call`` needs; None when this module cannot tell."""
    service, operation, params = call.service.lower(), call.operation, call.params
    if (service, operation) in _NO_PERMISSION:
        return []
    region, account = local.region, local.account
    if service == "s3":
        bucket = params.get("Bucket")
        if operation in {"CopyObject", "UploadPartCopy"}:
            source = _copy_source(params.get("CopySource"))
            if source is None or bucket is None:
                return None
            target = "s3:PutObject"
            return [Need("s3:GetObject", f"arn:{PARTITION}:s3:::{source}"), Need(target, f"arn:{PARTITION}:s3:::{bucket}/{params.get('Key', '*')}")]
        if operation in _S3_OBJECT_ACTIONS and bucket is not None and "Key" in params:
            return [Need(_S3_OBJECT_ACTIONS[operation], f"arn:{PARTITION}:s3:::{bucket}/{params['Key']}")]
        if operation == "DeleteObjects" and bucket is not None:
            return [Need("s3:DeleteObject", f"arn:{PARTITION}:s3:::{bucket}/*")]
        if operation in _S3_BUCKET_ACTIONS and bucket is not None:
            return [Need(_S3_BUCKET_ACTIONS[operation], f"arn:{PARTITION}:s3:::{bucket}")]
        return None
    if service == "dynamodb" and operation in _DYNAMODB_ACTIONS and "TableName" in params:
        table = f"arn:{PARTITION}:dynamodb:{region}:{account}:table/{params['TableName']}"
        if operation in ("Query", "Scan") and params.get("IndexName"):
            table = f"{table}/index/{params['IndexName']}"
        return [Need(f"dynamodb:{operation}", table)]
    if service == "sqs" and operation in _SQS_ACTIONS and "QueueUrl" in params:
        return [Need(_SQS_ACTIONS[operation], queue_arn(str(params["QueueUrl"]), region))]
    if service == "secretsmanager" and operation in ("GetSecretValue", "DescribeSecret") and "SecretId" in params:
        return [Need(f"secretsmanager:{operation}", secret_arn(str(params["SecretId"]), region, account))]
    if service == "events" and operation == "PutEvents":
        bus = str(params.get("EventBusName") or "default")
        arn = bus if bus.startswith("arn:") else f"arn:{PARTITION}:events:{region}:{account}:event-bus/{bus}"
        return [Need("events:PutEvents", arn)]
    if service == "sns" and operation == "Publish" and "TopicArn" in params:
        return [Need("sns:Publish", str(params["TopicArn"]))]
    return None


def queue_arn(url: str, region: str) -> str:
    account, name = urlparse(url).path.strip("/").split("/")[-2:]
    return f"arn:{PARTITION}:sqs:{region}:{account}:{name}"


def secret_arn(secret_id: str, region: str, account: str) -> str:
    """A secret by name or ARN as one ARN (locally the name stands for AWS's random suffix too)."""
    return secret_id if secret_id.startswith("arn:") else f"arn:{PARTITION}:secretsmanager:{region}:{account}:secret:{secret_id}"


# ------------------------------------------------------------------------------ the audit


def audit(
    grants: Mapping[str, list[Grant]],
    calls: Iterable[AwsCall],
    local: LocalResources,
    *,
    check_unused: bool = True,
    unused_allowed: Mapping[tuple[str, str, str], str] = UNUSED_ALLOWED,
) -> AuditReport:
    """Each call against its function's grants; with ``check_unused``, each grant against the calls."""
    report = AuditReport()
    used = _check_calls(grants, calls, local, report)
    if check_unused:
        _check_unused(grants, used, report, unused_allowed)
    return report


def _check_calls(grants: Mapping[str, list[Grant]], calls: Iterable[AwsCall], local: LocalResources, report: AuditReport) -> set[tuple[str, Grant]]:
    """Record each call's denials in ``report``; the grants some call used."""
    used: set[tuple[str, Grant]] = set()
    for call in calls:
        report.calls += 1
        if call.function not in grants:
            if call.function not in report.unknown_functions:
                report.unknown_functions.append(call.function)
            continue
        required = needs(call, local)
        if required is None:
            report.unmapped.append(call)
            continue
        for need in required:
            allowing = [grant for grant in grants[call.function] if grant.allows(need)]
            if not allowing:
                report.denied.append((call, need))
            used.update((call.function, grant) for grant in allowing)
    return used


def _check_unused(
    grants: Mapping[str, list[Grant]], used: set[tuple[str, Grant]], report: AuditReport, unused_allowed: Mapping[tuple[str, str, str], str]
) -> None:
    for function, function_grants_ in grants.items():
        for grant in function_grants_:
            if grant.managed is not None or (function, grant) in used or (function, grant) in {(f, g) for f, g in report.unused}:
                continue
            reason = unused_allowed.get((function, grant.action, grant.label))
            if reason is None:
                report.unused.append((function, grant))
            elif (function, grant, reason) not in report.unused_allowed:
                report.unused_allowed.append((function, grant, reason))


def audit_stack(info: Mapping[str, Any], template: Path, *, check_unused: bool = True) -> AuditReport:
    """The calls a local stack recorded (``stack.json``'s ``aws_calls_log``) against the template."""
    return audit_stacks([info], template, check_unused=check_unused)


def audit_stacks(infos: Sequence[Mapping[str, Any]], template: Path, *, check_unused: bool = True) -> AuditReport:
    """The calls several local stacks of one template recorded, as one run: each call against its
    role, and (with ``check_unused``) each grant against the calls of them all. The stacks must
    name their resources alike (the local stack always does), or the first one's names would not
    resolve another's calls."""
    if not infos:
        raise ValueError("no stack to audit")
    names = ("region", "input_bucket", "output_bucket", "jobs_table", "secret_id", "event_bus_name")
    for info in infos[1:]:
        different = [name for name in names if info.get(name) != infos[0].get(name)]
        if different:
            raise ValueError(f"the stack of {info.get('aws_calls_log')} names its {', '.join(different)} differently: audit it on its own")
    # Stacks started with other parameter values (``--parameter``) have other grants (a
    # Condition's RolePolicy): each group's calls are checked against its own roles, and a grant
    # is unused only if no stack that has it used it.
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for info in infos:
        groups.setdefault(json.dumps(info.get("parameter_overrides") or {}, sort_keys=True), []).append(info)
    report = AuditReport()
    all_grants: dict[str, list[Grant]] = {}
    used: set[tuple[str, Grant]] = set()
    for group in groups.values():
        local = LocalResources.from_stack_info(group[0], template)
        grants = function_grants(expand_template(template, region=local.region), local)
        calls = [call for info in group for call in load_calls(Path(str(info["aws_calls_log"])))]
        used |= _check_calls(grants, calls, local, report)
        for function, granted in grants.items():
            all_grants.setdefault(function, []).extend(grant for grant in granted if grant not in all_grants.get(function, []))
    if check_unused:
        _check_unused(all_grants, used, report, UNUSED_ALLOWED)
    return report


# ------------------------------------------------------------------------------ internals


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _wildcard(pattern: str, value: str, *, ignore_case: bool) -> bool:
    """IAM's matching: ``*`` any run of characters (``/`` too), ``?`` one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.IGNORECASE if ignore_case else 0) is not None


def _copy_source(source: Any) -> str | None:
    """``bucket/key`` of a CopySource (a dict or ``bucket/key[?versionId=...]``)."""
    if isinstance(source, Mapping) and "Bucket" in source and "Key" in source:
        return f"{source['Bucket']}/{source['Key']}"
    if isinstance(source, str) and "/" in source.lstrip("/"):
        return unquote(source.lstrip("/").split("?", 1)[0])
    return None


def _resolve(expression: Any, local: LocalResources, variables: Mapping[str, str] | None = None) -> str:
    """A policy resource with Ref, Fn::GetAtt and Fn::Sub resolved to local values."""
    if isinstance(expression, str):
        return expression
    if isinstance(expression, dict) and len(expression) == 1:
        ((key, value),) = expression.items()
        if key == "Ref":
            return _lookup(str(value), "Ref", local)
        if key == "Fn::GetAtt":
            target, attribute = value if isinstance(value, list) else str(value).split(".", 1)
            return _lookup(str(target), str(attribute), local)
        if key == "Fn::Sub":
            body, names = (value[0], value[1]) if isinstance(value, list) else (value, {})
            resolved_names = {k: _resolve(v, local) for k, v in names.items()}

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if name in resolved_names:
                    return resolved_names[name]
                target, _, attribute = name.partition(".")
                return _lookup(target, attribute or "Ref", local)

            return re.sub(r"\$\{([^}!]+)\}", substitute, str(body))
    raise ValueError(f"cannot resolve the policy resource {json.dumps(expression)} locally")


def _lookup(name: str, attribute: str, local: LocalResources) -> str:
    if attribute == "Ref":
        if name in local.pseudo():
            return local.pseudo()[name]
        if name in local.parameters:
            return local.parameters[name]
    found = local.attributes.get(name, {}).get(attribute)
    if found is None:
        raise ValueError(f"the local stack has no value for {name}.{attribute} (add it to LocalResources.from_stack_info)")
    return found


def _label(expression: Any) -> str:
    """A resource as the template names it: ``OutputBucket/*``, ``JobsTable/index/by-status``, ``*``."""
    if isinstance(expression, str):
        return expression
    if isinstance(expression, dict) and len(expression) == 1:
        ((key, value),) = expression.items()
        if key == "Ref":
            return str(value)
        if key == "Fn::GetAtt":
            return str(value[0] if isinstance(value, list) else str(value).split(".", 1)[0])
        if key == "Fn::Sub":
            body, names = (value[0], value[1]) if isinstance(value, list) else (value, {})
            references = [m for m in re.finditer(r"\$\{([^}!]+)\}", str(body)) if not m.group(1).startswith("AWS::")]
            if references:
                last = references[-1]
                name = last.group(1)
                head = _label(names[name]) if name in names else name.split(".", 1)[0]
                return head + str(body)[last.end() :]
    return json.dumps(expression)


def main(argv: list[str] | None = None) -> int:
    from local.client import DEFAULT_WORKDIR, REPO_ROOT, stack_json_path

    parser = argparse.ArgumentParser(description="Check the AWS calls a local stack recorded against each function's role.")
    parser.add_argument("--stack-json", type=Path, default=stack_json_path(DEFAULT_WORKDIR))
    parser.add_argument("--template", type=Path, default=REPO_ROOT / "template.yaml")
    parser.add_argument("--no-unused", action="store_true", help="only look for denied calls (a partial run uses only part of the grants)")
    args = parser.parse_args(argv)
    info = json.loads(args.stack_json.read_text(encoding="utf-8"))
    if not info.get("aws_calls_log"):
        print(f"{args.stack_json} has no aws_calls_log: start the stack with --record-aws-calls", file=sys.stderr)
        return 2
    report = audit_stack(info, args.template, check_unused=not args.no_unused)
    for function, grant, reason in report.unused_allowed:
        print(f"allowed unused: {function} {grant.action} on {grant.label}: {reason}")
    for line in report.failures():
        print(line)
    print(f"{report.calls} calls audited, {len(report.failures())} problems")
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
