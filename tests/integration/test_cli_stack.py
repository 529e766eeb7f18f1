"""The CLI finds a deployed stack by name through its CloudFormation outputs (moto server over HTTP)."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from aleph_cli.errors import CliError
from aleph_cli.stack import discover

OUTPUTS = {"InputBucketName": "in-bucket", "InputPrefix": "incoming/", "OutputBucketName": "out-bucket", "JobsTableName": "jobs-table"}


def create_stack(url: str, name: str, outputs: dict[str, str], parameters: dict[str, str] | None = None) -> None:
    parameters = parameters or {}
    template = {
        "Parameters": {key: {"Type": "String"} for key in parameters},
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    client = boto3.client("cloudformation", endpoint_url=url, region_name="us-east-1")
    client.create_stack(
        StackName=name, TemplateBody=json.dumps(template), Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()]
    )


def test_a_deployed_stack_is_found_by_name(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"aleph-{uuid.uuid4().hex[:8]}"
    create_stack(moto_server, name, OUTPUTS)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("ALEPH_STACK", name)
    stack = discover(region="us-east-1")
    assert (stack.name, stack.input_bucket, stack.input_prefix, stack.output_bucket, stack.jobs_table) == (
        name,
        "in-bucket",
        "incoming/",
        "out-bucket",
        "jobs-table",
    )
    assert stack.endpoint_url is None and stack.region == "us-east-1"


def test_a_stack_without_the_outputs_is_named_as_such(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"other-{uuid.uuid4().hex[:8]}"
    create_stack(moto_server, name, {"InputBucketName": "x"})
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    with pytest.raises(CliError, match=f"stack {name} has no output InputPrefix, JobsTableName, OutputBucketName"):
        discover(name, region="us-east-1")
