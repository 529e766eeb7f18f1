"""Which stack the CLI talks to: a deployed one (CloudFormation outputs) or the local one (``stack.json``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from aleph_cli.errors import CliError

LOCAL_DIR = Path(".local")
STACK_JSON = "stack.json"
# CloudFormation output -> StackInfo field.
OUTPUTS = {
    "InputBucketName": "input_bucket",
    "InputPrefix": "input_prefix",
    "OutputBucketName": "output_bucket",
    "JobsTableName": "jobs_table",
}


@dataclass(frozen=True)
class StackInfo:
    """Where a stack's buckets and table are, and how to reach them."""

    name: str
    input_bucket: str
    input_prefix: str
    output_bucket: str
    jobs_table: str
    region: str | None = None
    endpoint_url: str | None = None  # the local stack's moto server; None on AWS
    credentials: tuple[str, str] | None = None  # the local stack's dummy keys
    profile: str | None = None

    @cached_property
    def session(self) -> Any:
        import boto3

        if self.credentials:
            key, secret = self.credentials
            return boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret, region_name=self.region or "us-east-1")
        return boto3.session.Session(profile_name=self.profile, region_name=self.region)

    def client(self, service: str) -> Any:
        from botocore.config import Config

        config = Config(signature_version="s3v4", retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=60)
        return self.session.client(service, endpoint_url=self.endpoint_url, config=config)

    @cached_property
    def s3(self) -> Any:
        return self.client("s3")

    @cached_property
    def table(self) -> Any:
        return self.session.resource("dynamodb", endpoint_url=self.endpoint_url).Table(self.jobs_table)


def discover(stack_name: str | None = None, local_dir: str | Path | None = None, region: str | None = None, profile: str | None = None) -> StackInfo:
    """``stack_name`` (or ``$ALEPH_STACK``): a deployed stack; else the local stack's ``stack.json``
    in ``local_dir`` (or ``$ALEPH_LOCAL_DIR``, or ``./.local``)."""
    stack_name = stack_name or os.environ.get("ALEPH_STACK") or None
    if stack_name and local_dir is None:
        return from_cloudformation(stack_name, region, profile)
    folder = Path(local_dir or os.environ.get("ALEPH_LOCAL_DIR") or LOCAL_DIR)
    path = folder / STACK_JSON
    if not path.is_file():
        raise CliError(f"no stack: {path} does not exist (start one with `make local`) and no --stack NAME (or ALEPH_STACK) names a deployed one")
    return from_stack_json(path)


def from_stack_json(path: Path) -> StackInfo:
    try:
        return from_local_info(json.loads(path.read_text(encoding="utf-8")), f"local ({path})")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CliError(f"{path} is not a local stack's stack.json ({type(exc).__name__}: {exc})") from exc


def from_local_info(info: Mapping[str, Any], name: str = "local") -> StackInfo:
    """The local stack from its ``stack.json`` contents."""
    return StackInfo(
        name=name,
        input_bucket=str(info["input_bucket"]),
        input_prefix=str(info["input_prefix"]),
        output_bucket=str(info["output_bucket"]),
        jobs_table=str(info["jobs_table"]),
        region=str(info.get("region") or "us-east-1"),
        endpoint_url=str(info["s3_endpoint"]),
        credentials=(str(info.get("aws_access_key_id", "testing")), str(info.get("aws_secret_access_key", "testing"))),
    )


def from_cloudformation(stack_name: str, region: str | None = None, profile: str | None = None) -> StackInfo:
    import boto3

    session = boto3.session.Session(profile_name=profile, region_name=region)
    answer = session.client("cloudformation").describe_stacks(StackName=stack_name)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in answer["Stacks"][0].get("Outputs", [])}
    missing = sorted(name for name in OUTPUTS if name not in outputs)
    if missing:
        raise CliError(f"stack {stack_name} has no output {', '.join(missing)}: is it an aleph-pipeline stack?")
    values = {field: outputs[name] for name, field in OUTPUTS.items()}
    return StackInfo(name=stack_name, region=session.region_name, profile=profile, **values)
