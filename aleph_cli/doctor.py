"""``aleph doctor``: is the stack fit to run jobs? One line per check, ``ok`` or what to do.

Each check is a function of small callables (read the secret, ask a provider, post to the API,
read a queue's depth, query the jobs index), so its verdict is tested with fakes; ``run`` wires
them to a deployed stack (CloudFormation outputs and parameters) or to the local one (``stack.json``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from aleph_cli.errors import CliError
from aleph_cli.stack import StackInfo

# A job may be late by one reconcile run (every 5 minutes) past its grace before it is stuck.
MARGIN_SECONDS = 600
DEFAULT_CALLBACK_GRACE_SECONDS = 600  # the pipeline's defaults (aleph_pipeline.config)
DEFAULT_FINALIZE_GRACE_SECONDS = 1800
SHOWN_JOBS = 3  # job ids named in a stuck-jobs line
# A job id no job has (the right shape, so the API looks it up and answers 404).
PROBE_JOB_ID = "0" * 32
HTTP_TIMEOUT_SECONDS = 10.0
DLQS = {"submit": "SubmitDeadLetterQueueUrl", "finalize": "FinalizeDeadLetterQueueUrl", "notify": "NotifyDeadLetterQueueUrl", "poll": "PollDeadLetterQueueUrl"}
LOCAL_DLQS = {"submit": "submit_dlq_url", "finalize": "finalize_dlq_url", "notify": "notify_dlq_url", "poll": "poll_dlq_url"}


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Literal["ok", "fix", "skipped"]
    detail: str = ""

    @property
    def line(self) -> str:
        if self.verdict == "ok":
            return f"ok    {self.name}{': ' + self.detail if self.detail else ''}"
        return f"{'FIX ' if self.verdict == 'fix' else '--  '}  {self.name}: {self.detail}"


def ok(name: str, detail: str = "") -> Check:
    return Check(name, "ok", detail)


def fix(name: str, detail: str) -> Check:
    return Check(name, "fix", detail)


@dataclass(frozen=True)
class Target:
    """What doctor reads of a stack besides ``StackInfo``."""

    secret_id: str
    callback_api_url: str
    dlq_urls: Mapping[str, str]
    default_provider: str
    provider_chain: tuple[str, ...] = ()  # the stack's ProviderChain: a job may be sent to any of them
    provider_endpoints: Mapping[str, str] = field(default_factory=dict)
    callback_grace_seconds: int = DEFAULT_CALLBACK_GRACE_SECONDS
    finalize_grace_seconds: int = DEFAULT_FINALIZE_GRACE_SECONDS
    schedules: tuple[str, ...] | None = None  # EventBridge Scheduler schedule names; None: the local stack


# ---------------------------------------------------------------------------- checks


def api_key_of(entry: Any) -> str | None:
    """A secret entry is the key itself or ``{"apiKey": ...}`` (aleph_pipeline.secrets)."""
    key = entry.get("apiKey") if isinstance(entry, Mapping) else entry
    return key if isinstance(key, str) and key else None


def check_keys(
    secret: Mapping[str, Any], default_provider: str, verify: Callable[[str, str], str | None], known: Sequence[str], chain: Sequence[str] = ()
) -> list[Check]:
    """A key for the DefaultProvider, for every provider of the ProviderChain and for every
    provider the secret names, each accepted by its provider (``verify(provider, key)`` is None
    when accepted). The keys are never printed."""
    keyed = {provider: key for provider, entry in secret.items() if (key := api_key_of(entry))}
    checks: list[Check] = []
    required = {default_provider: "the DefaultProvider"}
    for provider in chain:
        required.setdefault(provider, "in the ProviderChain")
    for provider, why in required.items():
        if provider not in keyed:
            checks.append(fix(f"key {provider}", f"the provider secret has no key for `{provider}` ({why}): add one"))
    for provider in sorted(keyed):
        name = f"key {provider}"
        if provider not in known:
            checks.append(fix(name, f"`{provider}` is not a provider the pipeline knows ({', '.join(known)}): rename or remove it"))
            continue
        problem = verify(provider, keyed[provider])
        checks.append(ok(name, "accepted") if problem is None else fix(name, problem))
    return checks


def check_callback_api(url: str, post: Callable[[str], int]) -> Check:
    """A callback for a job no one has must be answered 404 (the API and its function run)."""
    name = "callback API"
    probe = f"{url.rstrip('/')}/callbacks/kie/{PROBE_JOB_ID}"
    try:
        status = post(probe)
    except Exception as exc:
        return fix(name, f"{url} did not answer ({type(exc).__name__}): is the stack deployed (or `make local` running)?")
    if status == 404:
        return ok(name, url)
    return fix(name, f"POST {probe} answered {status}, not 404: read the callback function's log")


def check_schedules(schedules: tuple[str, ...] | None, state_of: Callable[[str], str]) -> Check:
    name = "reconcile schedule"
    if schedules is None:
        return Check(name, "skipped", "not checked locally (the local stack runs it from the template)")
    if not schedules:
        return fix(name, "the stack has no EventBridge Scheduler schedule: deploy the template again")
    off = [schedule for schedule in schedules if state_of(schedule) != "ENABLED"]
    if off:
        return fix(name, f"{', '.join(off)} is disabled: aws scheduler update-schedule --name {off[0]} --state ENABLED ... (or deploy again)")
    return ok(name, "enabled")


def check_dlqs(urls: Mapping[str, str], depth: Callable[[str], int]) -> list[Check]:
    checks: list[Check] = []
    for name, url in urls.items():
        count = depth(url)
        if count == 0:
            checks.append(ok(f"{name} DLQ", "empty"))
        else:
            checks.append(fix(f"{name} DLQ", f"{count} message(s) in {url}: read them (aws sqs receive-message --queue-url {url}), fix the cause, redrive"))
    return checks


def iso(epoch: float) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=epoch)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_stuck(stale: Callable[[str, str], Iterable[Mapping[str, Any]]], now: float, callback_grace_seconds: int, finalize_grace_seconds: int) -> list[Check]:
    """Jobs the reconciler should have moved on: ``stale(state, updated_before)`` are the jobs of
    ``state`` last updated before the ISO time (the by-status index)."""
    found = {
        "SUBMITTED": list(stale("SUBMITTED", iso(now - callback_grace_seconds - MARGIN_SECONDS))),
        "SUCCEEDED": list(stale("SUCCEEDED", iso(now - finalize_grace_seconds - MARGIN_SECONDS))),
        "RECEIVED": [job for job in stale("RECEIVED", iso(now)) if _past_pairing(job, now)],
    }
    why = {
        "SUBMITTED": f"no callback or poll for over {callback_grace_seconds + MARGIN_SECONDS} s",
        "SUCCEEDED": f"not finalized for over {finalize_grace_seconds + MARGIN_SECONDS} s",
        "RECEIVED": f"past the pairing deadline by over {MARGIN_SECONDS} s",
    }
    checks: list[Check] = []
    for state, jobs in found.items():
        name = f"{state} jobs"
        if not jobs:
            checks.append(ok(name, "none stuck"))
            continue
        ids = ", ".join(str(job.get("jobId")) for job in jobs[:SHOWN_JOBS]) + (" ..." if len(jobs) > SHOWN_JOBS else "")
        checks.append(fix(name, f"{len(jobs)} stuck ({why[state]}): {ids}; is the reconcile schedule running? see `aleph status JOB`"))
    return checks


def _past_pairing(job: Mapping[str, Any], now: float) -> bool:
    deadline = job.get("pairingDeadline")
    return deadline is not None and now > float(deadline) + MARGIN_SECONDS


# ---------------------------------------------------------------------------- a stack's wiring


def chain_of(value: str | None) -> tuple[str, ...]:
    """``kie,apikley`` (the ProviderChain parameter, PROVIDER_CHAIN) as provider ids."""
    return tuple(name.strip() for name in (value or "").split(",") if name.strip())


def local_target(stack_json: Path) -> Target:
    info = json.loads(stack_json.read_text(encoding="utf-8"))
    env = {**info.get("handler_env", {}), **info.get("function_env", {}).get("reconcile", {})}
    return Target(
        secret_id=str(info["secret_id"]),
        callback_api_url=str(info["api_url"]),
        dlq_urls={name: str(info[key]) for name, key in LOCAL_DLQS.items() if info.get(key)},
        default_provider=str(env.get("DEFAULT_PROVIDER", "kie")),
        provider_chain=chain_of(env.get("PROVIDER_CHAIN")),
        provider_endpoints=json.loads(env.get("PROVIDER_ENDPOINTS") or "{}"),
        callback_grace_seconds=int(env.get("CALLBACK_GRACE_SECONDS", DEFAULT_CALLBACK_GRACE_SECONDS)),
        finalize_grace_seconds=int(env.get("FINALIZE_GRACE_SECONDS", DEFAULT_FINALIZE_GRACE_SECONDS)),
    )


def deployed_target(stack: StackInfo) -> Target:
    cloudformation = stack.client("cloudformation")
    described = cloudformation.describe_stacks(StackName=stack.name)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])}
    missing = [name for name in ("ProviderKeysSecretArn", "CallbackApiUrl") if name not in outputs]
    if missing:
        raise CliError(f"stack {stack.name} has no output {', '.join(missing)}: is it an aleph-pipeline stack?")
    schedules = tuple(
        str(resource["PhysicalResourceId"])
        for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack.name)
        for resource in page["StackResourceSummaries"]
        if resource["ResourceType"] == "AWS::Scheduler::Schedule" and resource.get("PhysicalResourceId")
    )
    return Target(
        secret_id=outputs["ProviderKeysSecretArn"],
        callback_api_url=outputs["CallbackApiUrl"],
        dlq_urls={name: outputs[key] for name, key in DLQS.items() if key in outputs},
        default_provider=parameters.get("DefaultProvider") or "kie",
        provider_chain=chain_of(parameters.get("ProviderChain")),
        callback_grace_seconds=int(parameters.get("CallbackGraceSeconds") or DEFAULT_CALLBACK_GRACE_SECONDS),
        schedules=schedules,
    )


def verifier(target: Target) -> Callable[[str, str], str | None]:
    """``verify(provider, key)``: the provider's own ``verify_key`` with that key."""
    import httpx

    from aleph_pipeline.providers import USER_AGENT, build_provider

    http = httpx.Client(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False, headers={"User-Agent": USER_AGENT})

    def verify(provider_id: str, key: str) -> str | None:
        provider = build_provider(provider_id, base_url=target.provider_endpoints.get(provider_id), http=http, api_key=lambda: key)
        problem: str | None = provider.verify_key()
        return problem

    return verify


def run(stack: StackInfo, target: Target, now: float | None = None) -> list[Check]:
    import httpx

    from aleph_pipeline.providers import PROVIDER_IDS

    checks: list[Check] = []
    secret_text = stack.client("secretsmanager").get_secret_value(SecretId=target.secret_id).get("SecretString") or ""
    try:
        secret = json.loads(secret_text)
    except ValueError:
        secret = None
    if isinstance(secret, dict):
        checks.extend(check_keys(secret, target.default_provider, verifier(target), PROVIDER_IDS, target.provider_chain))
    else:
        checks.append(fix("provider keys", 'the provider secret is not a JSON object keyed by provider id, like {"kie": "<key>"}: put one'))

    def post(url: str) -> int:
        return httpx.post(url, content=b"{}", headers={"Content-Type": "application/json"}, timeout=HTTP_TIMEOUT_SECONDS).status_code

    checks.append(check_callback_api(target.callback_api_url, post))
    scheduler = stack.client("scheduler") if target.schedules else None
    checks.append(check_schedules(target.schedules, lambda name: str(scheduler.get_schedule(Name=name)["State"]) if scheduler else ""))
    sqs = stack.client("sqs")

    def depth(url: str) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return sum(int(attributes.get(name, 0)) for name in names)

    checks.extend(check_dlqs(target.dlq_urls, depth))

    def stale(state: str, before: str) -> list[dict[str, Any]]:
        answer = stack.table.query(
            IndexName="by-status",
            KeyConditionExpression="#s = :s AND updatedAt < :before",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": state, ":before": before},
            Limit=100,
        )
        return list(answer.get("Items", []))

    checks.extend(check_stuck(stale, time.time() if now is None else now, target.callback_grace_seconds, target.finalize_grace_seconds))
    return checks
